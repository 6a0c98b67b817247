#!/usr/bin/env python
"""Benchmark of the shapes-world testbed: the shipped base pipeline and its scorers.

    python benchmarks/bench_testbed.py            # all 219 held-out prompts, 1000 real images
    python benchmarks/bench_testbed.py --quick    # 24 prompts, 300 real images (<= 60 s)

Measures, with the stock ``StableDiffusion3Pipeline.__call__`` at the default steps / guidance of
``assets/testbed/config.json`` (one seeded generator per image):
  * per-clause accuracies (colour, shape, count, position) and ``compositional_acc`` (every clause
    of the prompt right) of the base pipeline on held-out prompts, judged by the checker;
  * ``checker_heldout_acc``: fraction of fresh real (image, prompt) pairs, half matching and half
    not, on which the checker's verdict on every clause equals the ground truth (goal >= 0.98);
  * ``artifact_detector_acc`` on fresh clean vs. corrupted images (goal >= 0.95);
  * ``assets_mb``: size of ``assets/testbed``.
Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    from flowalign.cli import bounded

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="24 prompts, 300 real images")
    ap.add_argument(
        "--n-prompts", type=bounded(int, "[1, inf)"), default=None, help="held-out prompts (default all 219; quick 24)"
    )
    ap.add_argument("--n-real", type=bounded(int, "[1, inf)"), default=None, help="real images for scorer checks")
    ap.add_argument("--assets", default=None, help="testbed assets folder (default assets/testbed)")
    ap.add_argument("--seed", type=bounded(int, "[0, inf)"), default=0)
    ap.add_argument("--threads", type=bounded(int, "[1, inf)"), default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    try:  # the assets before minutes of sampling
        from flowalign.testbed.jobs import EvalJob, validate

        validate(EvalJob(assets=args.assets))
    except ValueError as err:
        ap.error(str(err))
    import torch

    from flowalign.testbed.evaluate import MAIN_KEYS, format_table, run_eval

    if args.threads:
        torch.set_num_threads(args.threads)
    n_prompts = args.n_prompts or (24 if args.quick else None)
    n_real = args.n_real or (300 if args.quick else 1000)
    t0 = time.time()
    metrics = run_eval(n_prompts, args.seed, args.assets, n_real=n_real)
    metrics["wall_s"] = round(time.time() - t0, 1)
    metrics["quick"] = bool(args.quick)
    print(format_table(metrics))
    goals = {
        "color_acc": metrics["color_acc"] >= 0.9,
        "shape_acc": metrics["shape_acc"] >= 0.7,
        "compositional_acc": 0.3 <= metrics["compositional_acc"] <= 0.7,
        "checker_heldout_acc": metrics["checker_heldout_acc"] >= 0.98,
        "artifact_detector_acc": metrics["artifact_detector_acc"] >= 0.95,
        "assets_mb": metrics["assets_mb"] <= 30,
    }
    print("targets met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in goals.items()))
    keys = MAIN_KEYS + (
        "kind_single_acc",
        "kind_count_acc",
        "kind_pair_acc",
        "kind_position_acc",
        "clause_fraction",
        "n_prompts",
        "num_inference_steps",
        "guidance_scale",
        "generated_artifact_prob",
        "generated_aesthetic",
        "wall_s",
        "quick",
    )
    out = {k: metrics[k] for k in keys if k in metrics}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
