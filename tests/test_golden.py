"""The golden training record (``tests/golden/training.json``, written by ``scripts/make_golden.py``
from the code before the training renovation): every preset's 3-iteration run must save the same
weights, optimizer state, EMA and metrics, byte for byte."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "scripts" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_matches_golden_record():
    golden = json.loads((ROOT / "tests" / "golden" / "training.json").read_text())
    script = _script()
    assert sorted(golden) == sorted(script.CASES)
    results = script.compute()
    moved = {name: [k for k in golden[name] if results[name].get(k) != golden[name][k]] for name in golden}
    assert not any(moved.values()), f"numbers moved: { ({n: k for n, k in moved.items() if k}) }"
