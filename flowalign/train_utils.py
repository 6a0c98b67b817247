"""Pieces of the trainer that are not its loop: the accelerate wrapper view, reward records, per-sample
generators, ODE/SDE generation, the periodic evaluation, accelerator set-up and tear-down.
``flowalign.trainer`` re-exports them (``from flowalign.trainer import generate`` keeps working)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .config import Config
from .data import PromptSet, sample_seed
from .sampling.rollout import rollout
from .types import Cond, Rollout, Scores


class Prepared:
    """The accelerate-wrapped transformer seen as the bare one: gradient-enabled calls go through the
    wrapper (DDP / FSDP / DeepSpeed hooks), no-grad calls (sampling, reference, eval) through the bare
    module unless the wrapper shards parameters; attributes (config, dtype, modules) are the bare ones."""

    def __init__(self, wrapped: Any, bare: torch.nn.Module, always_wrapped: bool):
        self._wrapped, self._bare, self._always = wrapped, bare, always_wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        use = self._wrapped if self._always or torch.is_grad_enabled() else self._bare
        return use(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bare, name)


def as_scores(out: Scores | Tensor, b: int) -> Scores:
    scores = out if isinstance(out, Scores) else Scores(total=torch.as_tensor(out).float().reshape(-1))
    total = scores.total.detach().float().cpu()
    if total.shape != (b,):
        raise ValueError(
            f"reward_fn returned shape {tuple(total.shape)} for a batch of {b}; return Tensor[B] or Scores."
        )
    valid = torch.isfinite(total) & (
        torch.ones(b, dtype=torch.bool) if scores.valid is None else scores.valid.cpu().bool()
    )
    comps = {k: v.detach().float().cpu() for k, v in scores.components.items()}
    return Scores(total=total, components=comps, valid=valid)


def cat_scores(parts: list[Scores]) -> Scores:
    keys = parts[0].components.keys()
    return Scores(
        total=torch.cat([p.total for p in parts]),
        valid=torch.cat([p.valid for p in parts]),
        components={k: torch.cat([p.components[k] for p in parts]) for k in keys},
    )


def generators(seed: int, iteration: int, indices: list[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(sample_seed(seed, iteration, i)) for i in indices]


@torch.no_grad()
def generate(
    model,
    prompts: list[str],
    cfg: Config,
    gens: list[torch.Generator],
    *,
    num_steps: int,
    guidance_scale: float,
    noise_levels: Tensor | None,
    rollout_fn: Callable = rollout,
    step: str = "ode",
    init_gens: list[torch.Generator] | None = None,
) -> tuple[Cond, Rollout, Tensor]:
    """encode -> initial noise (from ``init_gens``, default ``gens``) -> rollout (SDE noise from
    ``gens``) -> decode: (cond, rollout, images [B, 3, H, W] in [0, 1])."""
    res = cfg.model.resolution
    neg = cfg.model.negative_prompt or None  # None: the model's default ("" for SD3; Flux has none)
    cond = model.encode(prompts, guidance_scale=guidance_scale, negative_prompts=neg)
    x = model.initial_noise(len(prompts), res, res, generator=init_gens or gens)
    ro = rollout_fn(model, cond, x, model.sigmas(num_steps, res, res), step, noise_levels, generator=gens)
    return cond, ro, model.decode(ro.final)


@torch.no_grad()
def evaluate(
    model,
    reward_fn: Callable,
    prompts: PromptSet,
    cfg: Config,
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
        _, _, images = generate(
            model,
            texts,
            cfg,
            gens,
            num_steps=e.num_steps,
            guidance_scale=e.guidance_scale,
            noise_levels=None,
            rollout_fn=rollout_fn,
        )
        meta = prompts.columns(idx)
        sc = as_scores(reward_fn(images, texts, **meta), len(idx))
        extra = {k: as_scores(fn(images, texts, **meta), len(idx)).total for k, fn in (metrics or {}).items()}
        for k, v in {"reward": sc.total, **sc.components, **extra}.items():
            ok = real & torch.isfinite(v)
            sums[k] = sums.get(k, torch.zeros(2, dtype=torch.float64)) + torch.stack(
                [v[ok].double().sum(), ok.double().sum()]
            )
        shown += [im.cpu() for im, r in zip(images, real) if r][: max(0, e.grid_images - len(shown))]
    keys = sorted(sums)
    flat = torch.stack([sums[k] for k in keys]).to(acc.device) if keys else torch.zeros(0, 2, device=acc.device)
    flat = acc.reduce(flat, "sum").cpu()
    stats = {f"eval/{k}": float(flat[i, 0] / flat[i, 1].clamp_min(1)) for i, k in enumerate(keys)}
    grid = make_grid(torch.stack(shown), nrow=int(math.ceil(math.sqrt(len(shown)))), padding=1) if shown else None
    return stats, grid


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(
        cpu=cfg.train.cpu or not torch.cuda.is_available(),
        mixed_precision=cfg.train.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )


def zero_loss(params: list[torch.nn.Parameter]) -> Tensor:
    """A loss whose gradient is exactly 0 for every parameter (keeps DDP's reducer in step)."""
    return sum(p.sum() for p in params) * 0.0


def finish(acc) -> None:
    """Wait for every rank, then tear the process group down (2-process gloo runs otherwise abort
    at exit now and then; environment.md)."""
    import sys

    acc.wait_for_everyone()
    acc.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
