"""``flowalign train`` under FSDP2 on two CPU processes (gloo), launched with the shipped
scripts/accelerate/fsdp.yaml: 2 iterations and a checkpoint, then ``--resume`` for a third; the LoRA,
the optimizer state, the EMA and the exported adapter equal those of one process running the 3
iterations (measured max |difference| 3.8e-6, float32 reduction order; tolerance 2e-5).

accelerate 1.16 keeps CPU processes on DDP even when the launch asks for FSDP; the trainer switches
them to FSDP2 (``distributed.choose_fsdp``) and says so ("FSDP2: 12 of 12 trainable parameters
sharded ..."). Checkpoints hold full tensors (gathered on every rank, written by rank 0), so the
2-process checkpoints have the 1-process layout. The run keeps an EMA (updated every step) and the
KL to the adapter-off reference (the testbed preset's beta=0.04), both through the sharded model.
The layouts give the same updates only when every optimizer step sees the same rows with the same
weights: one optimizer step per iteration (optim.steps_per_iteration=1: the mean over all 8 rows x
3 trained steps either way) and no masked row (a masked mean per micro-batch would weigh the rows
by layout), checked from credit.jsonl; the reward adds the testbed's continuous aesthetic score to
its compositional one so that no group ties.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import TINY
from test_trainer_multiprocess import _free_port

from flowalign.models import load_model
from flowalign.train import run as train_cli
from flowalign.train.integrity import verify

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = TINY + [
    "optim.steps_per_iteration=1",
    "reward.weights.testbed_aesthetic=1",
    "log.credit_jsonl=true",
    "train.save_every=0",
    "train.ema=true",  # (the EMA shadow is sharded like the weights; checkpoints and exports gather it)
    "train.ema_every=1",
]
SHARDED = "FSDP2: 12 of 12 trainable parameters sharded over 2 processes"  # 6 targets x (A, B)


def _launch(*args: str) -> str:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "scripts/accelerate/fsdp.yaml"]
    cmd += ["--num_processes", "2", "--main_process_port", str(_free_port()), "scripts/train.py", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert SHARDED in out.stdout and "world_size             2" in out.stdout, out.stdout[-3000:]
    return out.stdout


def _credit(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "credit.jsonl").read_text().splitlines()]


@pytest.mark.e2e  # (about 60 CPU-seconds: two 2-process launches of torch + diffusers, one in-process run)
def test_fsdp2_train_resume_matches_one_process(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    _launch("testbed", *OVERRIDES, "train.iterations=2", f"train.output_dir={two}")
    ck2 = two / "checkpoints" / "checkpoint-000002"
    assert verify(ck2) is None
    out = _launch("--resume", str(two), "train.iterations=3")
    assert f"saved {two / 'checkpoints' / 'checkpoint-000003'}" in out
    cfg, _ = train_cli.resolve_config("testbed", OVERRIDES + ["train.iterations=3", f"train.output_dir={one}"], None)
    train_cli.main(cfg)

    a_rows, b_rows = _credit(two), _credit(one)
    assert len(a_rows) == len(b_rows) == 3
    for a, b in zip(a_rows, b_rows):  # every row trained at the 3 trained steps: the layouts weigh rows alike
        assert b["mask"] == [[True, True, True, False]] * 8 and a["mask"] == b["mask"]
        torch.testing.assert_close(torch.tensor(a["reward"]), torch.tensor(b["reward"]), rtol=0, atol=1e-4)
    ck3a, ck3b = (r / "checkpoints" / "checkpoint-000003" for r in (two, one))
    assert verify(ck2) is None and verify(ck3a) is None  # (the manifest: size + sha256 of every file)
    for part, n in (("trainable", 12), ("optimizer", 36), ("ema", 12)):  # full tensors, the 1-process layout
        a, b = load_file(str(ck3a / f"{part}.safetensors")), load_file(str(ck3b / f"{part}.safetensors"))
        assert a.keys() == b.keys() and len(a) == n  # (optimizer: exp_avg, exp_avg_sq, step per parameter)
        for k in a:
            assert a[k].shape == b[k].shape, k
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-5)  # float32 reduction order only
    assert not list(ck3a.glob("optimizer_*"))  # no per-rank optimizer shards
    trained = load_file(str(ck3a / "trainable.safetensors"))
    assert max(float(v.abs().max()) for k, v in trained.items() if "lora_B" in k) > 1e-2  # (B starts at 0)
    # the exported adapter (diffusers' LoRA format, written by rank 0 from the gathered EMA weights)
    lora_a, lora_b = (load_file(str(r / "lora" / "pytorch_lora_weights.safetensors")) for r in (two, one))
    assert lora_a.keys() == lora_b.keys() and len(lora_a) == 12
    for k in lora_a:
        torch.testing.assert_close(lora_a[k], lora_b[k], rtol=0, atol=2e-5)
    stock = load_model("tiny-sd3").pipe  # a stock StableDiffusion3Pipeline loads it: the trained adapter
    stock.load_lora_weights(str(two / "lora"))
    got = {n.replace(".default_0.", "."): p for n, p in stock.transformer.named_parameters() if "lora_" in n}
    assert {f"transformer.{n}" for n in got} == lora_a.keys()
    for n, t in got.items():
        torch.testing.assert_close(t, lora_a[f"transformer.{n}"], rtol=0, atol=0)
