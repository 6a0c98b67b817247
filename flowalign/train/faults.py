"""Faults cost at most one iteration.

* **A reward that raises** is called again (``train.reward_retries`` times); if it still fails the
  batch's rows are masked like non-finite rewards and counted (``skipped/reward_failures``). When
  every batch of ``train.reward_patience`` iterations in a row failed, the run saves a checkpoint
  and stops with ``RunStopped`` naming the reward's last error.
* **Non-finite weights after an optimizer step** (the gradient checks passed, the update did not):
  the trainable weights, optimizer state, EMA and counters go back to the start of the iteration
  (an in-memory snapshot taken then), the iteration is counted as restored
  (``skipped/restored_iterations``) and the run goes on; ``train.nonfinite_patience`` restores in a
  row stop it with a checkpoint of the last good state and an error naming the learning rate. A
  non-finite state is never checkpointed (``checkpoint.save`` refuses it).
* **SIGINT / SIGTERM**: the first one lets the current iteration finish, saves a checkpoint and
  raises ``Interrupted`` with a resume command that works as printed (the run directory, whatever
  ``train.output_dir`` was); a second SIGINT stops at once (the newest checkpoint is then the
  previous one).
"""

from __future__ import annotations

import copy
import dataclasses
import signal
import sys
import threading

import torch

from ..types import Scores
from .scores import as_scores


class RunStopped(RuntimeError):
    """The run stopped on a fault it could not get past; a checkpoint of the last good state exists."""


class Interrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM: ``resume`` is the command that continues the run."""

    def __init__(self, run_dir, saved: bool):
        self.resume = f"flowalign train --resume {run_dir}"
        what = "saved a checkpoint; resume" if saved else "stopped before a checkpoint of this iteration; resume"
        super().__init__(f"interrupted: {what} with `{self.resume}`")


class NonFiniteWeights(RuntimeError):
    """Raised inside the update when a step left a trainable weight NaN / inf."""


def score(run, images, texts: list[str], meta: dict) -> Scores:
    """The reward of one batch, called again up to ``train.reward_retries`` times when it raises;
    all-NaN (masked) scores when it keeps failing (counted)."""
    retries, state = run.cfg.train.reward_retries, run.state
    for attempt in range(retries + 1):
        try:
            with torch.no_grad():
                out = run.reward_fn(images, texts, **meta)
        except Exception as err:  # a reward model / server can fail in any way: retried, then counted
            run.hooks["last_reward_error"] = f"{type(err).__name__}: {err}"
            print(
                f"reward failed (attempt {attempt + 1}/{retries + 1}): {run.hooks['last_reward_error']}",
                file=sys.stderr,
                flush=True,
            )
            state.reward_retries += int(attempt < retries)
            continue
        return as_scores(out, len(texts))
    state.reward_failures += 1
    nan = torch.full((len(texts),), float("nan"))
    return Scores(total=nan, components={}, valid=torch.zeros(len(texts), dtype=torch.bool))


def check_weights(params) -> None:
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise NonFiniteWeights("a trainable weight is NaN / inf after an optimizer step")


def snapshot(run) -> dict:
    """The iteration-start state to restore on non-finite weights (or a graceful stop)."""
    with torch.no_grad():
        return {
            "params": [p.detach().clone() for p in run.params],
            "optimizer": copy.deepcopy(run.optimizer.state_dict()),
            "ema": copy.deepcopy(run.ema.state_dict()) if run.ema is not None else None,
            "state": dataclasses.replace(run.state),
        }


def restore(run, snap: dict) -> None:
    with torch.no_grad():
        for p, saved in zip(run.params, snap["params"]):
            p.copy_(saved)
    run.optimizer.load_state_dict(snap["optimizer"])
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.load_state_dict(snap["ema"])
    spent = ("nfe", "reward_retries", "reward_failures", "restored_iterations")  # what happened stays counted
    for f in dataclasses.fields(run.state):
        if f.name not in spent:
            setattr(run.state, f.name, getattr(snap["state"], f.name))


def fault_stats(state) -> dict[str, int]:
    """Fault counters for the log, from the first fault on (a clean run logs none of them)."""
    names = ("reward_retries", "reward_failures", "restored_iterations")
    return {f"skipped/{n}": getattr(state, n) for n in names if getattr(state, n)}


class StopSignals:
    """SIGINT / SIGTERM set ``requested`` (the loop stops after the current iteration); a second
    SIGINT raises KeyboardInterrupt at once. Installed only in the main thread; restored on exit."""

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = name
        print(
            f"{name}: finishing this iteration, then saving a checkpoint (Ctrl-C again to stop now).",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
