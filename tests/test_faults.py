"""Faults cost at most one iteration: a reward that raises once is retried and the run is the same
as without the fault; a reward that keeps raising stops the run cleanly with a checkpoint; a step
that leaves a weight non-finite is rolled back; SIGINT / SIGTERM save and print a resume command
that, run as printed, ends bitwise equal to an uninterrupted run (``e2e``: run by .ci/run)."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import PROMPTS, TINY, brightness

from flowalign.train import run as train_run
from flowalign.train.faults import RunStopped

ITERATIONS = 4


def tiny(tmp_path, name, *extra):
    items = TINY + [f"train.iterations={ITERATIONS}", "train.save_every=1", "train.keep_last=10"]
    items.append(f"train.output_dir={tmp_path / name}")
    cfg, _ = train_run.resolve_config(None, items + list(extra), None)
    return cfg


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class FlakyReward:
    """The brightness reward, raising on the calls listed in ``fail_calls`` (0-based)."""

    def __init__(self, fail_calls=(), fail_from: int | None = None):
        self.calls, self.fail_calls, self.fail_from = 0, set(fail_calls), fail_from

    def __call__(self, images, prompts, **metadata):
        n, self.calls = self.calls, self.calls + 1
        if n in self.fail_calls or (self.fail_from is not None and n >= self.fail_from):
            raise ConnectionError(f"reward server unreachable (call {n})")
        return brightness(images, prompts)


def test_a_reward_that_raises_once_is_retried_and_changes_nothing(tmp_path):
    ref = train_run.main(tiny(tmp_path, "ref"), reward_fn=brightness, prompts=PROMPTS)
    # 2 sampling batches per iteration: call 4 is iteration 2's first batch
    res = train_run.main(tiny(tmp_path, "flaky"), reward_fn=FlakyReward(fail_calls={4}), prompts=PROMPTS)
    for name, p in weights(ref.model).items():
        assert torch.equal(p, weights(res.model)[name]), name
    rows = metrics(tmp_path / "flaky")
    assert "skipped/reward_retries" not in rows[1] and rows[2]["skipped/reward_retries"] == 1
    assert res.state.reward_failures == 0 and res.state.skipped_iterations == 0


def test_a_reward_that_keeps_raising_stops_the_run_with_a_checkpoint(tmp_path):
    cfg = tiny(tmp_path, "dead", "train.reward_retries=1", "train.reward_patience=2", "train.iterations=10")
    with pytest.raises(RunStopped, match=r"no usable value in 2 iterations in a row.*ConnectionError: reward server"):
        train_run.main(cfg, reward_fn=FlakyReward(fail_from=2), prompts=PROMPTS)  # iteration 1 on: dead
    rows = metrics(tmp_path / "dead")
    # iteration 0 trained; iterations 1 and 2 had no reward: 2 batches x (1 try + 1 retry) each
    assert [r["skipped/iterations"] for r in rows] == [0, 1, 2]
    assert rows[-1]["skipped/reward_failures"] == 4 and rows[-1]["skipped/reward_retries"] == 4
    saved = sorted(p.name for p in (tmp_path / "dead" / "checkpoints").iterdir())
    assert saved[-1] == "checkpoint-000003"  # the stop saved the state after iteration 2


def test_a_step_that_leaves_a_weight_non_finite_is_rolled_back(tmp_path, monkeypatch):
    original, steps = torch.optim.AdamW.step, []

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 2:  # iteration 1's only optimizer step (1 step per iteration)
            self.param_groups[0]["params"][0].data.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    res = train_run.main(tiny(tmp_path, "nan", "optim.steps_per_iteration=1"), reward_fn=brightness, prompts=PROMPTS)
    assert res.state.restored_iterations == 1 and res.state.iteration == ITERATIONS
    assert all(bool(torch.isfinite(p).all()) for p in weights(res.model).values())
    ck = tmp_path / "nan" / "checkpoints"
    before, rolled = (load_file(str(ck / f"checkpoint-00000{i}" / "trainable.safetensors")) for i in (1, 2))
    assert all(torch.equal(before[k], rolled[k]) for k in before)  # iteration 1 left the weights as they were
    assert metrics(tmp_path / "nan")[-1]["skipped/restored_iterations"] == 1


def test_non_finite_steps_in_a_row_stop_naming_the_learning_rate(tmp_path, monkeypatch):
    original = torch.optim.AdamW.step

    def always(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", always)
    cfg = tiny(tmp_path, "inf", "train.nonfinite_patience=2")
    with pytest.raises(RunStopped, match=r"non-finite .* 2 iterations in a row .* lower optim.lr \(now 0.01\)"):
        train_run.main(cfg, reward_fn=brightness, prompts=PROMPTS)
    last = load_file(str(sorted((tmp_path / "inf" / "checkpoints").iterdir())[-1] / "trainable.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in last.values())  # the last good state, never a poisoned one


# --- SIGINT / SIGTERM through the command line ------------------------------------------------------------
CLI_ITERATIONS = 5
CLI = [
    "testbed",
    *TINY,
    f"train.iterations={CLI_ITERATIONS}",
    "train.save_every=2",
    'reward.weights={"testbed_aesthetic": 1}',
    "eval.metrics={}",
    "train.ema=true",
    "train.ema_every=1",
]


def flowalign() -> list[str]:
    exe = shutil.which("flowalign")
    return [exe] if exe else [sys.executable, "-m", "flowalign.cli"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    last = sorted((run_dir / "checkpoints").glob("checkpoint-*"))[-1]
    assert last.name == f"checkpoint-{CLI_ITERATIONS:06d}"
    return {**load_file(str(last / "trainable.safetensors")), **load_file(str(last / "ema.safetensors"))}


def interrupted_run(out: Path, sig: int, rng: random.Random, env: dict) -> str:
    """Start the command, send ``sig`` a random moment into a random iteration, return what it printed."""
    proc = subprocess.Popen(
        [*flowalign(), "train", *CLI, f"train.output_dir={out}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    at, lines = rng.randint(1, CLI_ITERATIONS - 2), []
    for line in proc.stdout:  # iteration `at` has ended and the next one begun once its line is printed
        lines.append(line)
        if line.startswith(f"it {at}/"):
            break
    time.sleep(rng.uniform(0.0, 0.05))
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, "".join(lines) + rest
    return rest


@pytest.mark.e2e
def test_sigint_and_sigterm_then_the_printed_resume_command_is_bitwise_exact(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    full = subprocess.run(
        [*flowalign(), "train", *CLI, f"train.output_dir={tmp_path / 'full'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert full.returncode == 0, full.stderr[-2000:]
    reference, rng = final_weights(tmp_path / "full"), random.Random()
    for k, sig in enumerate([signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT]):
        out = tmp_path / f"cut{k}"
        printed = interrupted_run(out, sig, rng, env)
        command = re.search(r"resume with `(flowalign train --resume [^`]+)`", printed)
        assert command, printed
        argv = shlex.split(command.group(1))
        again = subprocess.run([*flowalign(), *argv[1:]], env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        got = final_weights(out)
        assert all(torch.equal(reference[n], got[n]) for n in reference), (k, sig)
