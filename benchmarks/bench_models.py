"""Model-family benchmark: flowalign's adapters vs the stock diffusers pipelines, side by side.

For each family (``qwenimage``, ``qwenimage_edit``, ``flux2`` [Klein, true CFG], ``flux_kontext``,
``wan`` [its FlowMatchEuler scheduler]; extras ``flux2_dev`` [guidance embedding] and ``wan_unipc``
[the UniPC scheduler the released Wan 2.1 ships: flowalign samples Euler on its grid, a documented
departure, so that row is not 0]) on its tiny offline pipeline (fp32, fixed seeds, the two prompts
of the family's tests, true CFG / guidance on), prints a table, then as its last line one JSON object:
  <family>_ode_vs_diffusers_max_abs_diff    flowalign's ODE rollout + decode vs the pipeline's own
                                            ``__call__(output_type="pt")``, same seed / steps / guidance
                                            (images in [0, 1]; Wan: the [B, F, 3, H, W] video)
  <family>_logprob_recompute_max_abs_diff   every stored SDE step's log-prob recomputed with
                                            ``log_prob_at`` (the training path) vs sampling time, over
                                            every stochastic step kind (a = 0.7, 4 steps)
  <family>_time_ratio                       flowalign (encode + noise + ODE rollout + decode: the work of
                                            ``__call__``) / the stock ``__call__``: median of per-repeat
                                            ratios over interleaved repeats (stock, ours, stock, ours, ...)
The tiny models make the time ratio a measure of per-step overhead, not of the transformer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from flowalign.cli import bounded  # noqa: E402
from flowalign.sampling import log_prob_at, rollout  # noqa: E402
from flowalign.sampling.sde import STEPS  # noqa: E402

FAMILY_NAMES = ("qwenimage", "qwenimage_edit", "flux2", "flux_kontext", "wan")
EXTRAS = ("flux2_dev", "wan_unipc")  # FLUX.2 [dev] (guidance embedding); Wan with the shipped UniPC scheduler
PROMPTS = ["two red circles", "a blue square left of a green star"]
NEGATIVES = ["", "blurry photo"]


@dataclass
class Case:
    """One family's tiny pipeline, its adapter and how both are called for the same output."""

    pipe: Any
    model: Any
    height: int
    width: int
    guidance: float
    stock_kw: dict  # pipe(...) besides steps / size / generator / output_type
    encode_kw: dict = field(default_factory=dict)  # model.encode(PROMPTS, guidance, **encode_kw)
    noise_kw: dict = field(default_factory=dict)  # model.initial_noise(B, H, W, gen, **noise_kw)
    video: bool = False  # the stock output is .frames, ours decode_video


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _qwenimage() -> Case:
    from flowalign.models.qwenimage import QwenImageModel
    from flowalign.models.tiny_qwen import tiny_qwenimage_pipeline

    pipe = _quiet(tiny_qwenimage_pipeline(seed=0))
    stock = {"prompt": PROMPTS, "negative_prompt": NEGATIVES, "true_cfg_scale": 4.0}
    return Case(pipe, QwenImageModel(pipe), 32, 48, 4.0, stock, {"negative_prompts": NEGATIVES})


def _qwenimage_edit() -> Case:
    import numpy as np
    from PIL import Image

    from flowalign.models.qwenimage_edit import QwenImageEditModel
    from flowalign.models.tiny_qwen import tiny_qwenimage_edit_pipeline

    pipe = _quiet(tiny_qwenimage_edit_pipeline(seed=0))
    # sources at their 1024 x 1024 condition size (the pipeline resizes anything else to ~1024^2)
    src = [Image.fromarray((np.random.RandomState(s).rand(1024, 1024, 3) * 255).astype("uint8")) for s in (1, 2)]
    stock = {"prompt": PROMPTS, "negative_prompt": NEGATIVES, "true_cfg_scale": 4.0, "image": src}
    return Case(pipe, QwenImageEditModel(pipe), 64, 96, 4.0, stock, {"negative_prompts": NEGATIVES, "images": src})


def _flux2() -> Case:
    from flowalign.models.flux2 import Flux2Model
    from flowalign.models.tiny_flux2 import tiny_flux2_klein_pipeline

    pipe = _quiet(tiny_flux2_klein_pipeline(seed=0))
    stock = {"prompt": PROMPTS, "guidance_scale": 4.0, "max_sequence_length": 32}
    return Case(pipe, Flux2Model(pipe, max_sequence_length=32), 32, 48, 4.0, stock)


def _flux2_dev() -> Case:
    from flowalign.models.flux2 import Flux2Model
    from flowalign.models.tiny_flux2 import tiny_flux2_pipeline

    pipe = _quiet(tiny_flux2_pipeline(seed=0))
    stock = {"prompt": PROMPTS, "guidance_scale": 4.0, "max_sequence_length": 64}
    return Case(pipe, Flux2Model(pipe, max_sequence_length=64), 32, 48, 4.0, stock)


def _flux_kontext() -> Case:
    from flowalign.models.flux_kontext import FluxKontextModel
    from flowalign.models.tiny_flux2 import tiny_flux_kontext_pipeline

    pipe = _quiet(tiny_flux_kontext_pipeline(seed=0))
    h, w = 32, 48
    src = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    stock = {"prompt": PROMPTS, "guidance_scale": 3.5, "max_sequence_length": 32, "image": src}
    stock.update(max_area=h * w, _auto_resize=False)  # keep the source's size, as the adapter does
    return Case(pipe, FluxKontextModel(pipe, max_sequence_length=32), h, w, 3.5, stock, {"images": src})


def _wan(scheduler: Any = None) -> Case:
    from flowalign.models.tiny_wan import tiny_wan_pipeline
    from flowalign.models.wan import WanModel

    pipe = _quiet(tiny_wan_pipeline(seed=0, scheduler=scheduler))
    model = WanModel(pipe, max_sequence_length=16, num_frames=9, default_size=32)
    stock = {"prompt": PROMPTS, "guidance_scale": 4.5, "max_sequence_length": 16, "num_frames": 9}
    return Case(pipe, model, 32, 48, 4.5, stock, noise_kw={"num_frames": 9}, video=True)


def _wan_unipc() -> Case:
    """The scheduler the released Wan 2.1 checkpoints ship (UniPC, 2nd order): flowalign samples Euler
    on its grid, so this row measures that departure (not expected to be 0)."""
    from flowalign.models.tiny_wan import wan_unipc_scheduler

    return _wan(wan_unipc_scheduler())


BUILDERS: dict[str, Callable[[], Case]] = {
    "qwenimage": _qwenimage,
    "qwenimage_edit": _qwenimage_edit,
    "flux2": _flux2,
    "flux2_dev": _flux2_dev,
    "flux_kontext": _flux_kontext,
    "wan": _wan,
    "wan_unipc": _wan_unipc,
}


def _gen(case: Case, seed: int):
    """One generator for the batch (image pipelines), one per row for Wan (as its tests)."""
    if case.video:
        return [torch.Generator().manual_seed(seed + i) for i in range(len(PROMPTS))]
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def stock_call(case: Case, steps: int, seed: int) -> torch.Tensor:
    out = case.pipe(
        num_inference_steps=steps,
        height=case.height,
        width=case.width,
        generator=_gen(case, seed),
        output_type="pt",
        **case.stock_kw,
    )
    return out.frames if case.video else out.images


@torch.no_grad()
def sample(case: Case, steps: int, seed: int, kind: str = "ode", level: float = 0.0):
    """encode -> initial noise -> rollout (the Rollout and the Cond)."""
    m, h, w = case.model, case.height, case.width
    cond = m.encode(PROMPTS, case.guidance, **case.encode_kw)
    x = m.initial_noise(len(PROMPTS), h, w, _gen(case, seed), **case.noise_kw)
    noise = _gen(case, seed + 100) if level else None
    return rollout(m, cond, x, m.sigmas(steps, h, w), kind, level or None, generator=noise), cond


@torch.no_grad()
def ours_call(case: Case, steps: int, seed: int) -> torch.Tensor:
    ro, _ = sample(case, steps, seed)
    m = case.model
    return m.decode_video(ro.final) if case.video else m.decode(ro.final, case.height, case.width)


def recompute_diff(case: Case, steps: int, kinds: list[str]) -> float:
    """max |log_prob_at - stored| over every step of a rollout of each stochastic kind (a = 0.7)."""
    worst = 0.0
    for kind in kinds:
        ro, cond = sample(case, steps, seed=11, kind=kind, level=0.7)
        with torch.enable_grad():  # the training path
            for j in range(steps):
                again = log_prob_at(case.model, cond, ro, j).log_prob.detach()
                worst = max(worst, float((again - ro.log_probs[:, j]).abs().max()))
    return worst


def time_ratio(case: Case, steps: int, repeats: int) -> tuple[float, float, float]:
    """(median stock s, median ours s, median of the per-repeat ours / stock ratios), interleaved."""
    stock, ours = [], []
    for i in range(repeats):
        for fn, times in ((stock_call, stock), (ours_call, ours)):
            t = time.perf_counter()
            fn(case, steps, seed=i)
            times.append(time.perf_counter() - t)
    ratios = [o / s for o, s in zip(ours, stock)]
    return statistics.median(stock), statistics.median(ours), statistics.median(ratios)


def run_family(name: str, steps: int, repeats: int, kinds: list[str]) -> dict[str, float]:
    case = BUILDERS[name]()
    ref = stock_call(case, steps, seed=3)  # also the warm-up of both sides
    ours = ours_call(case, steps, seed=3)
    if ours.shape != ref.shape:
        raise RuntimeError(f"{name}: flowalign output {tuple(ours.shape)} != stock {tuple(ref.shape)}")
    diff, spread = float((ours - ref).abs().max()), float(ref.std())  # spread: the output is not constant
    recompute = recompute_diff(case, min(steps, 4), kinds)
    t_stock, t_ours, ratio = time_ratio(case, steps, repeats)
    return {"diff": diff, "std": spread, "recompute": recompute, "stock_s": t_stock, "ours_s": t_ours, "ratio": ratio}


def families(text: str) -> list[str]:
    """argparse type for --families: a comma list of BUILDERS names (no repeats)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in BUILDERS]
    if not names or bad or len(set(names)) != len(names):
        why = f"unknown {bad}" if bad else ("empty" if not names else "a family is repeated")
        raise argparse.ArgumentTypeError(f"{text!r}: {why}; pass a comma list of {','.join(BUILDERS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 steps, 5 timing repeats (<= 90 s on 2 cores)")
    ap.add_argument("--families", type=families, default=list(BUILDERS), help=f"comma list of {','.join(BUILDERS)}")
    ap.add_argument("--repeats", type=bounded(int, "[1, inf)"), default=None, help="timing pairs (5 quick / 20)")
    ap.add_argument("--steps", type=bounded(int, "[2, inf)"), default=8, help="ODE steps (quick: at most 4)")
    ap.add_argument("--threads", type=bounded(int, "[1, inf)"), default=1, help="torch threads (1: stable timings)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the tiny FLUX.2 [dev] processor's per-call kwargs notice
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = args.repeats or (5 if args.quick else 20)
    steps = min(args.steps, 4) if args.quick else args.steps
    kinds = sorted(k for k in STEPS if k != "ode")
    rows = {}
    for name in args.families:
        start = time.perf_counter()
        rows[name] = run_family(name, steps, repeats, kinds)
        print(f"[{name}: {time.perf_counter() - start:.1f} s]", file=sys.stderr, flush=True)
    result: dict[str, float] = {}
    for name, r in rows.items():
        result[f"{name}_ode_vs_diffusers_max_abs_diff"] = r["diff"]
        result[f"{name}_logprob_recompute_max_abs_diff"] = r["recompute"]
        result[f"{name}_time_ratio"] = round(r["ratio"], 4)
    print(f"{steps} ODE steps, {repeats} interleaved repeats, log-prob kinds {kinds}")
    head = ("family", "ode diff", "out std", "logp diff", "stock s", "ours s", "ratio")
    print(f"{head[0]:16s}" + "".join(f"{h:>10s}" for h in head[1:]))
    for name, r in rows.items():
        cells = [f"{r[k]:10.3g}" for k in ("diff", "std", "recompute")]
        cells += [f"{r[k]:10.4f}" for k in ("stock_s", "ours_s")] + [f"{r['ratio']:10.3f}"]
        print(f"{name:16s}" + "".join(cells))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
