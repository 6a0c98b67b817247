"""One short GPU check (<= 8 minutes on one H100): a Flow-GRPO iteration of the SD3.5-Medium
transformer (its published config, random weights) at 512 px in bf16 with LoRA r32 and gradient
checkpointing, and of the testbed transformer, each next to the planner's estimate for the same
configuration (``flowalign.plan.plan`` on 1 GPU).

One iteration, on the transformer only (no text encoders, VAE or reward model: random text states
stand in for the encoders and ``-mean(x0_pred^2)`` for the reward, both costing nothing): sample
``--rows`` latents with ``flow_sde`` (a = 0.7) over the preset's 10 shifted steps with classifier-free
guidance (one doubled batch), group-normalise the rewards, then on the 2 trained steps (a fixed window
at steps 0-1) recompute the log-probs with grad and take Flow-GRPO's clipped-ratio loss, backward, clip
and one AdamW step. Measured: images / s of the whole iteration (median of ``--repeats`` after one
warm-up) and ``torch.cuda.max_memory_allocated``; the planner's ``peak_memory_gb_per_gpu`` (weights +
optimizer + activations + rollouts) and its ``est_seconds_per_iteration`` at MFU 0.4 stand beside them.

    python benchmarks/bench_gpu.py                # the real run on CUDA
    python benchmarks/bench_gpu.py --dry-run      # CPU, tiny configs: checks the script end to end

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

# an SD3.5-Medium-shaped config for the dry run: dual attention, qk RMSNorm, 2 blocks
TINY_SD35 = dict(
    _class_name="SD3Transformer2DModel",
    attention_head_dim=16,
    caption_projection_dim=32,
    dual_attention_layers=[0],
    in_channels=16,
    joint_attention_dim=32,
    num_attention_heads=2,
    num_layers=2,
    out_channels=16,
    patch_size=2,
    pooled_projection_dim=32,
    pos_embed_max_size=16,
    qk_norm="rms_norm",
    sample_size=16,
)


def bench_cfg(name: str, rows: int, resolution: int, seq: int):
    """The preset as this bench runs it: one group of ``rows`` images on 1 GPU, bf16 frozen weights
    and autocast, no KL / EMA, 2 trained steps in one optimizer step."""
    from flowalign.train import apply_overrides, get_preset

    over = [f"sample.group_size={rows}", "sample.groups_per_iteration=1", f"sample.batch_size={rows}"]
    over += ["optim.steps_per_iteration=1", "sample.window.kind=fixed", "sample.window.options.size=2"]
    over += ["model.dtype=bf16", "train.mixed_precision=bf16", "objective.options.beta=0", "train.ema=false"]
    over += [f"model.resolution={resolution}", f"model.max_sequence_length={seq}", "sample.num_steps=10"]
    return apply_overrides(get_preset(name), over)


def make_model(spec, cfg, device):
    from flowalign.plan.build import _trainable, transformer_class

    with torch.device(device):
        model = transformer_class(spec).from_config(spec.config).requires_grad_(False)
    _trainable(model, spec, cfg)
    return model.to(device).train()


def velocity(model, x, sigma, cond, w: float):
    """CFG velocity: one doubled batch, as the SD3 adapter runs it."""
    two = torch.cat([x, x]).to(torch.bfloat16)
    t = (sigma * 1000).expand(two.shape[0]).to(x.device)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(hidden_states=two, timestep=t, **cond, return_dict=False)[0].float()
    v_u, v_c = out.chunk(2)
    return v_u + w * (v_c - v_u)


def iteration(model, params, optimizer, cond, x, cfg, gen) -> None:
    """One Flow-GRPO iteration on ``x``'s rows (module doc)."""
    from flowalign.sampling.schedule import shifted_sigmas
    from flowalign.sampling.sde import flow_sde

    s, w, a = cfg.sample, cfg.sample.guidance_scale, cfg.sample.noise_level
    sigmas = shifted_sigmas(s.num_steps, 3.0).to(x.device)
    latents, log_probs = [x], []
    with torch.no_grad():
        for j in range(s.num_steps):
            noise = a if j < 2 else 0.0  # the fixed window: SDE on steps 0-1, ODE after
            out = flow_sde(
                latents[-1],
                velocity(model, latents[-1], sigmas[j], cond, w),
                sigmas[j],
                sigmas[j + 1],
                noise,
                generator=gen,
            )
            latents.append(out.x_next)
            log_probs.append(out.log_prob)
        reward = -out.x0_pred.square().mean((1, 2, 3))
    adv = (reward - reward.mean()) / (reward.std() + 1e-4)
    clip = cfg.objective.options.clip_range
    for j in range(2):
        v = velocity(model, latents[j], sigmas[j], cond, w)
        lp = flow_sde(latents[j], v, sigmas[j], sigmas[j + 1], a, x_next=latents[j + 1]).log_prob
        ratio = torch.exp(lp - log_probs[j])
        loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean() / 2
        loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_case(label: str, spec, cfg, device: str, repeats: int) -> dict:
    from flowalign.plan import plan
    from flowalign.plan.build import example_inputs

    rows = cfg.sample.batch_size
    estimate = plan(cfg, gpus=1, strategy="ddp", gpu="h100", mfu=0.4, spec=spec)
    model = make_model(spec, cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr)
    with torch.device(device):
        ins = example_inputs(spec, cfg, 2 * rows)
    cond = {k: v.to(device) for k, v in ins.items() if k in ("encoder_hidden_states", "pooled_projections")}
    gen = torch.Generator(device).manual_seed(0)
    cuda = device == "cuda"
    times = []
    for _ in range(repeats + 1):
        x = torch.randn(ins["hidden_states"][:rows].shape, generator=gen, device=device)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        iteration(model, params, optimizer, cond, x, cfg, gen)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times[1:])
    return {
        f"{label}_images_per_s": round(rows / seconds, 3),
        f"{label}_seconds_per_iteration": round(seconds, 3),
        f"{label}_max_memory_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if cuda else None,
        f"{label}_planner_peak_memory_gb": estimate["peak_memory_gb_per_gpu"],
        f"{label}_planner_memory_gb": estimate["memory_gb_per_gpu"],
        f"{label}_planner_est_seconds_at_mfu_0.4": estimate["est_seconds_per_iteration"],
        f"{label}_params": estimate["params"],
    }


def main(argv=None) -> int:
    from flowalign.plan.build import Spec, load_spec, published

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny configs (checks the script)")
    ap.add_argument("--rows", type=int, default=9, help="images per iteration (the preset's batch: 9)")
    ap.add_argument("--repeats", type=int, default=2, help="timed iterations after one warm-up")
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device; run with --dry-run on a CPU")
    t0 = time.time()
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dry_run": args.dry_run}
    if args.dry_run:
        sd35_cfg = bench_cfg("sd35_pickscore", 2, 64, 8)
        sd35 = Spec("tiny-sd35", None, TINY_SD35)
    else:
        sd35_cfg = bench_cfg("sd35_pickscore", args.rows, 512, 128)
        # the transformer only, as this bench runs it: the planner leaves out the pipeline's text encoders and VAE
        sd35 = dataclasses.replace(published()["stabilityai/stable-diffusion-3.5-medium"], components=None)
    out |= run_case("sd35m", sd35, sd35_cfg, device, args.repeats)
    tb_cfg = bench_cfg("testbed", 2 if args.dry_run else 16, 32, 16)
    out |= run_case("testbed", load_spec(tb_cfg), tb_cfg, device, args.repeats)
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
