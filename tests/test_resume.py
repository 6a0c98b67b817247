"""Exact resume: a run SIGKILLed at a random point and resumed with ``--resume auto`` ends with
weights, optimizer and EMA states bitwise equal to an uninterrupted run (CPU, deterministic)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time

import torch
from test_trainer import PROMPTS, RUNNER, TINY, brightness

from flowalign.train import checkpoint as ckpt
from flowalign.train import integrity
from flowalign.train import run as train_cli

ITERATIONS = 5
# EMA every step and a KL term, so every part of the state matters for the end result
OVERRIDES = TINY + [
    f"train.iterations={ITERATIONS}",
    "train.save_every=1",
    "optim.steps_per_iteration=2",
    "train.ema=true",
    "train.ema_every=1",
    "loss.beta=0.05",
    "train.keep_last=2",
]


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}


def test_sigkill_at_random_point_then_resume_is_bitwise_exact(tmp_path):
    # uninterrupted reference run, in this process
    cfg, _ = train_cli.resolve_config(None, OVERRIDES + [f"train.output_dir={tmp_path / 'full'}"], None)
    full = train_cli.main(cfg, reward_fn=brightness, prompts=PROMPTS)
    assert full.state.optimizer_step == 2 * ITERATIONS

    # the same run in a subprocess, killed (SIGKILL) a random moment after a random checkpoint: the moment
    # is a random fraction (< 0.9) of the last iteration's duration, so the kill lands before the run could
    # finish however fast this machine iterates (a fixed delay let a fast machine save checkpoint 5 first)
    rng = random.Random()
    kill_after, frac = rng.randint(2, ITERATIONS - 2), rng.uniform(0.0, 0.9)
    saved_at: dict[int, float] = {}
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {**os.environ, "FA_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(runner), *OVERRIDES, f"train.output_dir={tmp_path / 'cut'}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"saved .*checkpoint-(\d+)", line)
        if m:
            saved_at[int(m.group(1))] = time.perf_counter()
        if m and int(m.group(1)) == kill_after:
            delay = frac * (saved_at[kill_after] - saved_at.get(kill_after - 1, saved_at[kill_after]))
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)[-2000:]
    done = [i for i, _ in ckpt.checkpoints(tmp_path / "cut")]
    assert done and done[-1] < ITERATIONS, f"the run was not cut short: {done}"
    # whatever moment the kill hit, every checkpoint left matches its manifest (size + sha256 of each file)
    left = ckpt.checkpoints(tmp_path / "cut")
    assert all((p / "manifest.json").is_file() and integrity.verify(p) is None for _, p in left), left

    # resume from the latest complete checkpoint and finish
    cfg, path = train_cli.resolve_config(None, [f"train.output_dir={tmp_path / 'cut'}"], "auto")
    assert path == ckpt.latest(tmp_path / "cut")
    resumed = train_cli.main(cfg, reward_fn=brightness, prompts=PROMPTS, resume=path)
    assert resumed.state.iteration == ITERATIONS and resumed.state.optimizer_step == 2 * ITERATIONS

    a, b = _trainable(full.model), _trainable(resumed.model)
    where = f"(killed {delay:.2f}s after checkpoint {kill_after}, resumed from {path.name})"
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), where
    assert integrity.verify(ckpt.latest(tmp_path / "cut")) is None
    parts_a, _ = ckpt.load(ckpt.latest(tmp_path / "full"))
    parts_b, _ = ckpt.load(ckpt.latest(tmp_path / "cut"))
    for part in ("ema", "optimizer"):
        flat_a, flat_b = ckpt.flatten(parts_a[part])[1], ckpt.flatten(parts_b[part])[1]
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), f"{part} differs {where}"
