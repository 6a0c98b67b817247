"""Two processes (accelerate launch --multi_gpu on CPU/gloo, environment.md) against one process with
the same seed and global batch: the same prompt groups spread over ranks, the same gathered rewards and
advantages, and weights that stay identical on both ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file
from test_trainer import PROMPTS, RUNNER, TINY, brightness

from flowalign.train import run as train_cli

# 4 prompts x 4 images = 16 per iteration: 2 ranks x 8 (2 batches of 4) vs 1 rank x 16 (4 batches);
# a random SDE window and one initial noise per group, both derived from (seed, iteration, group)
OVERRIDES = TINY + [
    "sample.groups_per_iteration=4",
    "train.iterations=2",
    "optim.steps_per_iteration=2",
    "log.credit_jsonl=true",
    "train.save_every=0",
    "sample.window=random",
    "sample.window_size=2",
    "sample.same_noise=true",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _credit(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "credit.jsonl").read_text().splitlines()]


def test_two_processes_match_one_and_stay_in_sync(tmp_path):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    (tmp_path / "dump").mkdir()
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "FA_THREADS": "1",
        "FA_DUMP": str(tmp_path / "dump"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(runner),
        *OVERRIDES,
        f"train.output_dir={tmp_path / 'two'}",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "world_size             2" in out.stdout  # really two processes, not two lone runs

    cfg, _ = train_cli.resolve_config(None, OVERRIDES + [f"train.output_dir={tmp_path / 'one'}"], None)
    train_cli.main(cfg, reward_fn=brightness, prompts=PROMPTS)
    two, one = _credit(tmp_path / "two"), _credit(tmp_path / "one")
    assert len(two) == len(one) == 2
    for a, b in zip(two, one):
        # the global sample order, prompts and groups are identical at every iteration
        assert a["index"] == b["index"] == list(range(16))
        assert a["prompt"] == b["prompt"] and a["group"] == b["group"]
        groups = a["group"]
        assert sorted(groups.count(g) for g in set(groups)) == [4, 4, 4, 4]
        assert all(len({a["prompt"][i] for i in range(16) if groups[i] == g}) == 1 for g in set(groups))
        assert any(groups[i] == groups[j] for i in range(8) for j in range(8, 16))  # groups span both ranks
    # iteration 0 starts from the same weights: the same per-sample noise gives the same rewards and
    # advantages (each device runs the same batches of 4 rows in both layouts)
    torch.testing.assert_close(torch.tensor(two[0]["reward"]), torch.tensor(one[0]["reward"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor(two[0]["advantages"]), torch.tensor(one[0]["advantages"]), rtol=0, atol=1e-4
    )
    assert two[0]["mask"] == one[0]["mask"]
    # DDP keeps both ranks' weights bitwise identical, and training moved them
    r0, r1 = (load_file(str(tmp_path / "dump" / f"rank{r}.safetensors")) for r in (0, 1))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    assert any(k.endswith("lora_B.default.weight") and r0[k].abs().max() > 0 for k in r0)
