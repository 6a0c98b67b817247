"""Generation and the periodic evaluation: ODE samples of held-out prompts with fixed per-prompt
noise, scored by the training reward, its components and extra eval-only metrics over all ranks."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..sampling.rollout import rollout
from ..types import Cond, Rollout
from . import early_stop
from .data import PromptSet, generators
from .families import batch_sources, frames_kw, source_kw, with_sources
from .scores import as_scores

if TYPE_CHECKING:
    from .records import Run


@torch.no_grad()
def generate(
    model,
    prompts: list[str],
    cfg,
    gens: list[torch.Generator],
    *,
    num_steps: int,
    guidance_scale: float,
    noise_levels: Tensor | None,
    rollout_fn: Callable = rollout,
    step: str = "ode",
    init_gens: list[torch.Generator] | None = None,
    images: Tensor | None = None,
) -> tuple[Cond, Rollout, Tensor]:
    """encode (with the source ``images`` [B, 3, H, W] of an editing model) -> initial noise (from
    ``init_gens``, default ``gens``; ``model.num_frames`` frames for a video) -> rollout (SDE noise
    from ``gens``) -> decode: (cond, rollout, images [B, 3, H, W] or videos [B, F, 3, H, W] in [0, 1])."""
    res = cfg.model.resolution
    neg = cfg.model.negative_prompt or None  # None: the model's default ("" for SD3; Flux has none)
    cond = model.encode(prompts, guidance_scale=guidance_scale, negative_prompts=neg, **source_kw(model, images))
    x = model.initial_noise(len(prompts), res, res, generator=init_gens or gens, **frames_kw(cfg))
    ro = rollout_fn(model, cond, x, model.sigmas(num_steps, res, res), step, noise_levels, generator=gens)
    return cond, ro, model.decode(ro.final)


@torch.no_grad()
def evaluate(
    model,
    reward_fn: Callable,
    prompts: PromptSet,
    cfg,
    acc,
    rollout_fn: Callable = rollout,
    metrics: dict[str, Callable] | None = None,
) -> tuple[dict[str, float], Tensor | None]:
    """ODE samples of the first ``eval.num_prompts`` held-out prompts with fixed per-prompt noise ->
    mean reward total, components and extra ``metrics`` (name -> reward-like fn) over all ranks,
    and a grid image (main process)."""
    from torchvision.utils import make_grid

    e, world, rank = cfg.eval, acc.num_processes, acc.process_index
    n = min(e.num_prompts, len(prompts))
    per = math.ceil(n / world)  # equal shards (padded) so collective forwards stay in step
    mine = [rank * per + i for i in range(per)]
    sums: dict[str, Tensor] = {}
    shown: list[Tensor] = []
    for s in range(0, per, e.batch_size):
        idx = mine[s : s + e.batch_size]
        real = torch.tensor([i < n for i in idx])
        idx = [min(i, n - 1) for i in idx]
        texts = [prompts.prompts[i] for i in idx]
        gens = generators(e.seed, 0, idx, model.device)
        sources = batch_sources(model, prompts, idx, cfg)
        _, _, images = generate(
            model,
            texts,
            cfg,
            gens,
            num_steps=e.num_steps,
            guidance_scale=e.guidance_scale,
            noise_levels=None,
            rollout_fn=rollout_fn,
            images=sources,
        )
        meta = with_sources(prompts.columns(idx), sources)
        sc = as_scores(reward_fn(images, texts, **meta), len(idx))
        extra = {k: as_scores(fn(images, texts, **meta), len(idx)).total for k, fn in (metrics or {}).items()}
        for k, v in {"reward": sc.total, **sc.components, **extra}.items():
            ok = real & torch.isfinite(v)
            sums[k] = sums.get(k, torch.zeros(2, dtype=torch.float64)) + torch.stack(
                [v[ok].double().sum(), ok.double().sum()]
            )
        shown += [(im[0] if im.ndim == 4 else im).cpu() for im, r in zip(images, real) if r][
            : max(0, e.grid_images - len(shown))
        ]  # a video shows its first frame
    keys = sorted(sums)
    flat = torch.stack([sums[k] for k in keys]).to(acc.device) if keys else torch.zeros(0, 2, device=acc.device)
    flat = acc.reduce(flat, "sum").cpu()
    stats = {f"eval/{k}": float(flat[i, 0] / flat[i, 1].clamp_min(1)) for i, k in enumerate(keys)}
    grid = make_grid(torch.stack(shown), nrow=int(math.ceil(math.sqrt(len(shown)))), padding=1) if shown else None
    return stats, grid


# --- the schedule of the periodic evaluation (the loop calls these) ---------------------------------
def swap(run: Run):
    """Evaluate and export with the EMA weights when there is an EMA."""
    return run.ema.swapped() if run.ema is not None else contextlib.nullcontext()


def evals_on(run: Run) -> bool:
    return run.cfg.eval.every > 0 or run.cfg.eval.every_nfe > 0


def eval_due(run: Run, it: int) -> bool:
    """Every eval.every iterations and/or each time eval.every_nfe more NFEs are spent."""
    e = run.cfg.eval
    by_nfe = e.every_nfe > 0 and run.state.nfe >= run.next_eval_nfe
    if by_nfe:
        run.next_eval_nfe = (run.state.nfe // e.every_nfe + 1) * e.every_nfe
    return (e.every > 0 and it % e.every == 0) or by_nfe


def run_eval(run: Run, it: int) -> None:
    if run.hooks.get("eval_prompts") is None or not evals_on(run):
        return
    t = time.time()
    with swap(run):
        stats, grid = evaluate(
            run.model,
            run.reward_fn,
            run.hooks["eval_prompts"],
            run.cfg,
            run.acc,
            run.hooks["rollout_fn"],
            run.hooks.get("eval_metrics"),
        )
    stats["time/eval"] = time.time() - t
    run.log.scalars(stats, it)
    if grid is not None:
        run.log.image("eval/samples", grid, it)
    run.result.evals.append({"iteration": it, "nfe": run.state.nfe, **stats})
    early_stop.track(run, it, stats)
    shown = "  ".join(f"{k[5:]}={v:.4f}" for k, v in stats.items() if k.startswith("eval/"))
    run.acc.print(f"eval @ {it}: " + shown)
