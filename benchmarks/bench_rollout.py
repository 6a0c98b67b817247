"""Rollout benchmark: flowalign's sampler vs the stock diffusers pipelines, measured side by side.

Prints a table, then as its last line one JSON object with
  ode_vs_diffusers_time_ratio        flowalign ODE (encode + rollout + decode) / StableDiffusion3Pipeline
  ode_vs_diffusers_max_abs_diff      final latents, same tiny SD3 model, prompt and seed
  flux_ode_vs_diffusers_max_abs_diff same for FluxPipeline
  sde_logprob_vs_ode_time_ratio      flow_sde rollout with log-probs / ODE rollout
  tree_vs_flat_nfe_per_leaf          NFE per leaf, 16 leaves and 10 steps, tree / flat
  recomputed_logprob_max_abs_diff    log_prob_at vs sampling time, every stochastic step (SD3 + Flux)
Times are medians over interleaved repeats (A, B, A, B, ...), so machine noise hits both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from flowalign.cli import bounded  # noqa: E402
from flowalign.models import FluxModel, SD3Model  # noqa: E402
from flowalign.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline  # noqa: E402
from flowalign.sampling import TreeSpec, log_prob_at, noise_table, rollout, tree_rollout  # noqa: E402

PROMPT = "a red circle left of a blue square"


def pipeline_latents(pipe, steps, size, guidance, seed, **kw):
    out = pipe(
        PROMPT,
        num_inference_steps=steps,
        height=size,
        width=size,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        **kw,
    )
    return out.images


def ours(model, steps, size, guidance, seed, kind="ode", level=0.0, decode=False):
    g = torch.Generator().manual_seed(seed)
    x = model.initial_noise(1, size, size, g)
    cond = model.encode([PROMPT], guidance)
    ro = rollout(
        model, cond, x, model.sigmas(steps, size, size), kind, noise_table(steps, level) if level else None, generator=g
    )
    if decode:
        model.decode(ro.final, size, size)
    return ro, cond


def interleaved(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def recompute_diff(model, steps, size, guidance) -> float:
    worst = 0.0
    for kind in ("flow_sde", "dance_sde", "cps"):
        ro, cond = ours(model, steps, size, guidance, seed=3, kind=kind, level=0.7)
        with torch.no_grad():
            for j in range(steps):
                worst = max(worst, float((log_prob_at(model, cond, ro, j).log_prob - ro.log_probs[:, j]).abs().max()))
    return worst


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (<= 60 s on 2 cores)")
    ap.add_argument("--repeats", type=bounded(int, "[1, inf)"), default=None)
    ap.add_argument("--steps", type=bounded(int, "[1, inf)"), default=20)
    ap.add_argument(
        "--threads",
        type=bounded(int, "[1, inf)"),
        default=1,
        help="torch threads (1 keeps shared 2-core machines stable)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = args.repeats or (3 if args.quick else 15)
    steps, size, guidance = (min(args.steps, 10) if args.quick else args.steps), 32, 4.0

    # exactness on the tiny pipelines
    sd3_pipe = tiny_sd3_pipeline(seed=0)
    sd3_pipe.set_progress_bar_config(disable=True)
    sd3 = SD3Model(sd3_pipe)
    ref = pipeline_latents(sd3_pipe, steps, size, guidance, seed=1)
    sd3_diff = float((ours(sd3, steps, size, guidance, seed=1)[0].final - ref).abs().max())
    flux_pipe = tiny_flux_pipeline(seed=0)
    flux_pipe.set_progress_bar_config(disable=True)
    flux = FluxModel(flux_pipe, max_sequence_length=32)
    ref = pipeline_latents(flux_pipe, steps, size, 3.5, seed=1, max_sequence_length=32)
    flux_diff = float((ours(flux, steps, size, 3.5, seed=1)[0].final - ref).abs().max())
    recompute = max(recompute_diff(sd3, 10, size, guidance), recompute_diff(flux, 10, size, 3.5))

    # timing on a larger tiny SD3 (compute comparable to the Python overhead of a real model step)
    big_pipe = tiny_sd3_pipeline(
        seed=0,
        transformer_kwargs=dict(
            num_layers=4, attention_head_dim=16, num_attention_heads=4, caption_projection_dim=64, sample_size=32
        ),
    )
    big_pipe.set_progress_bar_config(disable=True)
    big = SD3Model(big_pipe)
    big_size = 64
    t = interleaved(
        {
            "diffusers": lambda: big_pipe(
                PROMPT,
                num_inference_steps=steps,
                height=big_size,
                width=big_size,
                guidance_scale=guidance,
                generator=torch.Generator().manual_seed(0),
                output_type="pt",
            ),
            "ode": lambda: ours(big, steps, big_size, guidance, 0, decode=True),
            "sde": lambda: ours(big, steps, big_size, guidance, 0, kind="flow_sde", level=0.7, decode=True),
        },
        repeats,
    )

    # tree vs flat NFE: binary splits at steps 2, 4, 6, 8 of 10 -> 16 leaves
    spec = TreeSpec((2, 4, 6, 8), 2)
    cond = sd3.encode([PROMPT], guidance)
    g = torch.Generator().manual_seed(0)
    tree = tree_rollout(
        sd3,
        cond,
        sd3.initial_noise(1, size, size, g),
        sd3.sigmas(10, size, size),
        spec,
        "flow_sde",
        noise_table(10, 0.7),
        generator=g,
    )
    flat_nfe_per_leaf = 10.0
    tree_ratio = tree.nfe / len(tree.leaves) / flat_nfe_per_leaf

    result = {
        "ode_vs_diffusers_time_ratio": round(t["ode"] / t["diffusers"], 4),
        "ode_vs_diffusers_max_abs_diff": sd3_diff,
        "flux_ode_vs_diffusers_max_abs_diff": flux_diff,
        "sde_logprob_vs_ode_time_ratio": round(t["sde"] / t["ode"], 4),
        "tree_vs_flat_nfe_per_leaf": round(tree_ratio, 4),
        "recomputed_logprob_max_abs_diff": recompute,
    }
    print(f"{'quantity':38s} value")
    print(f"{'diffusers SD3 call (s, median)':38s} {t['diffusers']:.4f}")
    print(f"{'flowalign ODE (s, median)':38s} {t['ode']:.4f}")
    print(f"{'flowalign flow_sde + log-probs (s)':38s} {t['sde']:.4f}")
    print(f"{'tree NFE / leaves':38s} {tree.nfe} / {len(tree.leaves)}")
    for k, v in result.items():
        print(f"{k:38s} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
