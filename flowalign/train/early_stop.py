"""Early stopping on a held-out gold reward (``eval.early_stop``): a reward-hacking mitigation.

The proxy a run optimises can keep rising while a better-informed ("gold") score of held-out samples
falls; stopping at the gold score's best eval and keeping those weights bounds the damage (Gao et al.
2023, "Scaling Laws for Reward Model Overoptimization", arXiv 2210.10760, measure exactly this gap).
Here the gold score is any eval metric (``"reward"`` or a key of ``eval.metrics``), evaluated by the
trainer's periodic eval on the held-out prompts (ODE, fixed noise), so every rank sees the same value.

* ``track(run, it, stats)`` (called after each eval): a better value (by more than
  ``eval.early_stop_min_delta``) becomes the best and its trainable weights are copied (CPU); otherwise
  the count of evals without improvement grows.
* ``due(run)``: that count reached ``eval.early_stop_patience``.
* ``restore_best(run)``: the best eval's weights back into the trainable parameters, before the last
  checkpoint and the export, so what the run leaves is the model it selected; ``keep_best(run)`` does
  the same after the last eval of a run that ended on its budget with a worse gold score than its best
  (then the last checkpoint holds the last weights, the export the best).

Departures / limits: the best weights live in memory only, so a resumed run starts tracking afresh;
the optimizer state stays that of the last step (the checkpoint is for deployment, not for
continuing past the stop); with ``train.ema`` the evaluated weights are the EMA's, which is why the
config check refuses that combination.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .records import Run


@dataclass
class Best:
    value: float  # the best value of the gold metric so far
    iteration: int  # the iteration whose eval gave it (weights after that many iterations)
    weights: list[torch.Tensor] = field(default_factory=list)  # CPU copies of the trainable parameters
    since: int = 0  # evals without an improvement since


def check_early_stop(cfg) -> None:
    """``eval.early_stop`` names an eval metric, evals are on, and no EMA (one clear error)."""
    e = cfg.eval
    if not e.early_stop:
        return
    names = ["reward", *e.metrics]
    if e.early_stop not in names:
        raise ValueError(
            f"eval.early_stop={e.early_stop!r} is not an eval metric; choose one of {names} "
            "(add a gold reward with eval.metrics.<name>={'reward': ...})."
        )
    if e.every <= 0 and e.every_nfe <= 0:
        raise ValueError("eval.early_stop needs periodic evals; set eval.every (or eval.every_nfe) > 0.")
    if cfg.train.ema:
        raise ValueError("eval.early_stop with train.ema=true is not supported; set train.ema=false.")


def track(run: Run, it: int, stats: dict[str, float]) -> None:
    """Record the eval of iteration ``it``: a new best (with its weights) or one more eval without."""
    e = run.cfg.eval
    if not e.early_stop:
        return
    value, best = stats[f"eval/{e.early_stop}"], run.best
    if best is None or value > best.value + e.early_stop_min_delta:
        run.best = Best(value, it, [p.detach().to("cpu", copy=True) for p in run.params])
        return
    best.since += 1


def due(run: Run) -> bool:
    return run.best is not None and run.best.since >= run.cfg.eval.early_stop_patience


def keep_best(run: Run) -> None:
    """At the end of a run (after its last eval): the best eval's weights back unless the last eval was the
    best or an early stop already restored them, so the export is the model early stopping selects."""
    if run.best is None or run.result.early_stop is not None or run.best.since == 0:
        return
    restore_best(run)


@torch.no_grad()
def restore_best(run: Run) -> None:
    """The best eval's weights back into the trainable parameters (and the stop logged)."""
    best = run.best
    for p, w in zip(run.params, best.weights):
        p.copy_(w.to(p.device, p.dtype))
    run.result.early_stop = {"iteration": best.iteration, "value": best.value}
    run.acc.print(
        f"early stop: eval/{run.cfg.eval.early_stop} has not improved on {best.value:.4f} (iteration "
        f"{best.iteration}) for {best.since} evals; the weights of iteration {best.iteration} are restored."
    )
