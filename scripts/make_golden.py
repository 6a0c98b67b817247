"""Golden training record: short fixed-seed trainings of every training preset, hashed.

    python scripts/make_golden.py            # write tests/golden/training.json
    python scripts/make_golden.py --check    # recompute and compare (what tests/test_golden.py does)

Each case is a preset (plus the overrides below: 3 iterations of small groups, 1 torch thread, no
wall-clock budget) trained on the shipped testbed with its real rewards. The record holds, per case,
the sha256 of every part of the final checkpoint (trainable LoRA weights, optimizer state, EMA, the
exported LoRA file) and of ``metrics.jsonl`` with its wall-time keys (``time/*``) removed. A refactor
of the training side must leave every hash unchanged: the numbers did not move.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "training.json"

# 2 groups per iteration, 3 iterations, no eval except where a case turns it on, no progress bars.
SMALL = ["train.iterations=3", "sample.groups_per_iteration=2", "eval.every=0", "log.progress=false"]
CASES: dict[str, tuple[str, list[str]]] = {
    "testbed": ("testbed", ["sample.batch_size=8", "eval.every=2", "eval.num_prompts=4", "eval.batch_size=4"]),
    "testbed_dense": ("testbed_dense", ["sample.group_size=4", "sample.batch_size=4"]),
    "testbed_dense_psi": (
        "testbed_dense_psi",
        ["sample.group_size=4", "sample.batch_size=4", "credit.calibrate_iterations=2", "credit.calibrate_samples=4"],
    ),
    "testbed_turning_point": ("testbed_turning_point", ["sample.group_size=4", "sample.batch_size=4"]),
    "testbed_g2rpo": ("testbed_g2rpo", ["sample.group_size=4", "sample.batch_size=4"]),
    "testbed_branchgrpo": ("testbed_branchgrpo", ["sample.batch_size=8"]),
    "testbed_treegrpo": ("testbed_treegrpo", ["sample.batch_size=8"]),
    "testbed_euphonium": ("testbed_euphonium", ["sample.group_size=4", "sample.batch_size=4"]),
    "testbed_mixgrpo": ("testbed_mixgrpo", ["sample.group_size=4", "sample.batch_size=4", "sample.window_every=1"]),
    "testbed_artifact_reg": ("testbed_artifact_reg", ["sample.group_size=4", "sample.batch_size=4"]),
    "testbed_nft": ("testbed_nft", ["sample.group_size=4", "sample.batch_size=2"]),
    "testbed_ema_kl": (
        "testbed",
        ["sample.group_size=4", "sample.batch_size=4", "train.ema=true", "train.ema_every=1", "loss.beta=0.1"],
    ),
}


def digest_tensors(tensors: dict) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def digest_metrics(path: Path) -> tuple[str, list[dict]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = {k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
        rows.append(row)
    text = "\n".join(json.dumps(r, sort_keys=True) for r in rows)
    return hashlib.sha256(text.encode()).hexdigest(), rows


def run_case(name: str, out: Path) -> dict:
    """Train one case into ``out`` and hash what it saved."""
    from safetensors.torch import load_file

    from flowalign.train.run import main, resolve_config

    preset, extra = CASES[name]
    cfg, _ = resolve_config(preset, [*SMALL, *extra, f"train.output_dir={out}"], None)
    main(cfg)
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"))
    last = ckpts[-1]
    record = {"checkpoint": last.name}
    for f in sorted(last.glob("*.safetensors")):
        if not f.name.startswith("rng_"):
            record[f.stem] = digest_tensors(load_file(str(f)))
    lora = last / "lora" / "pytorch_lora_weights.safetensors"
    if lora.is_file():
        record["lora_export"] = digest_tensors(load_file(str(lora)))
    record["metrics"], rows = digest_metrics(out / "metrics.jsonl")
    record["final_reward_mean"] = [r for r in rows if "reward/total_mean" in r][-1]["reward/total_mean"]
    return record


def compute(names: list[str] | None = None) -> dict[str, dict]:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(CASES):
            results[name] = run_case(name, Path(tmp) / name)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed record instead of writing")
    parser.add_argument("--case", action="append", default=None, help="only this case (repeatable)")
    parser.add_argument("--print", action="store_true", help="print the hashes as one JSON line (no compare, no write)")
    args = parser.parse_args(argv)
    results = compute(args.case)
    if args.print:
        print(json.dumps(results, sort_keys=True))
        return 0
    if args.check:
        golden = json.loads(GOLDEN.read_text())
        bad = {n: [k for k in r if r[k] != golden[n].get(k)] for n, r in results.items()}
        bad = {n: ks for n, ks in bad.items() if ks}
        print(json.dumps({"cases": len(results), "mismatched": bad}))
        return 1 if bad else 0
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    if args.case and GOLDEN.is_file():
        results = {**json.loads(GOLDEN.read_text()), **results}
    GOLDEN.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(json.dumps({"cases": len(results), "written": str(GOLDEN.relative_to(ROOT))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
