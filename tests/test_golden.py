"""The golden training record (``tests/golden/training.json``, written by ``scripts/make_golden.py``
from the code before the training renovation): every preset's 3-iteration run must save the same
weights, optimizer state, EMA and metrics, byte for byte. The cases run in two processes of one
thread each (the machines have two cores); each process is deterministic on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_golden.py"


@pytest.mark.e2e  # two 1-thread training subprocesses over 12 cases (~40 s); .ci/run runs the e2e step
def test_training_matches_golden_record():
    golden = json.loads((ROOT / "tests" / "golden" / "training.json").read_text())
    names = sorted(golden)
    halves = [names[0::2], names[1::2]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--print", *[a for n in half for a in ("--case", n)]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for half in halves
    ]
    results = {}
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.update(json.loads(out.strip().splitlines()[-1]))
    assert sorted(results) == names
    moved = {name: [k for k in golden[name] if results[name].get(k) != golden[name][k]] for name in names}
    assert not any(moved.values()), f"numbers moved: { ({n: k for n, k in moved.items() if k}) }"
