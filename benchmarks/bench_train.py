"""Flow-GRPO on the embedded testbed: held-out compositional accuracy before and after training.

    python benchmarks/bench_train.py --minutes 15 --seeds 3    # the main job, 3 seeds x 15 min
    python benchmarks/bench_train.py --quick                   # <= 60 s: the training reward rises

Trains the ``testbed`` preset (``flowalign train`` with no arguments) for ``--minutes`` of wall time
per seed, then samples the held-out prompts (testbed ``test`` split, never trained on) with the ODE
sampler and fixed noise, and judges every image with the testbed checker (GenEval analogue: an image
counts as correct when every clause of its prompt holds). Goal: after >= before + (1 - before) / 2.
Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from flowalign.train import apply_overrides, get_preset  # noqa: E402
from flowalign.train import build as train_build  # noqa: E402
from flowalign.train import run as train_run  # noqa: E402


@torch.no_grad()
def compositional_accuracy(model, cfg, prompts: list[str], seeds: int) -> dict[str, float]:
    """ODE samples (eval.num_steps, eval.guidance_scale) of each prompt under ``seeds`` fixed noises,
    judged by the testbed checker -> accuracy metrics of testbed.evaluate.clause_metrics."""
    from flowalign.testbed import world as W
    from flowalign.testbed.evaluate import clause_metrics
    from flowalign.testbed.scorers import load_checker
    from flowalign.train.data import generators as _generators
    from flowalign.train.evaluation import generate

    checker = load_checker()
    texts = [p for _ in range(seeds) for p in prompts]
    correct, mask = [], []
    bs = cfg.eval.batch_size
    for s in range(0, len(texts), bs):
        chunk = texts[s : s + bs]
        gens = _generators(cfg.eval.seed, 0, list(range(s, s + len(chunk))), model.device)
        _, _, images = generate(
            model,
            chunk,
            cfg,
            gens,
            num_steps=cfg.eval.num_steps,
            guidance_scale=cfg.eval.guidance_scale,
            noise_levels=None,
        )
        res = checker(images, [W.parse_prompt(p) for p in chunk])
        correct.append(res.correct.cpu())
        mask.append(res.mask.cpu())
    labels = [W.parse_prompt(p) for p in texts]
    return clause_metrics(torch.cat(correct), torch.cat(mask), labels)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, and the runs' config (preset + overrides) through ``flowalign train``'s start-up
    checks: a bad value is one argparse error before anything loads."""
    from flowalign.cli import bounded
    from flowalign.train.checks import validate

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=bounded(float, "(0, inf)"), default=15.0, help="training wall time per seed")
    ap.add_argument(
        "--seeds", type=bounded(int, "[1, inf)"), default=3, help="independent training runs (train.seed = 0..S-1)"
    )
    ap.add_argument("--quick", action="store_true", help="<= 60 s: train ~40 s and show the reward rising")
    ap.add_argument(
        "--eval-prompts", type=bounded(int, "[0, inf)"), default=0, help="held-out prompts (0 = all of the test split)"
    )
    ap.add_argument("--eval-seeds", type=bounded(int, "[1, inf)"), default=2, help="noise seeds per held-out prompt")
    ap.add_argument("--preset", default="testbed", help="a testbed preset (default: the main job's), e.g. testbed_nft")
    ap.add_argument("overrides", nargs="*", help="extra config overrides, e.g. optim.lr=5e-4")
    args = ap.parse_args(argv)
    items = QUICK if args.quick else [f"train.max_minutes={args.minutes}", "eval.every=0"]
    try:
        validate(apply_overrides(get_preset(args.preset), ["train.iterations=100000", *items, *args.overrides]))
    except ValueError as err:
        ap.error(f"--preset {args.preset} with overrides {args.overrides}: {err}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    from flowalign.testbed import world as W

    if args.quick:
        return quick(args)
    prompts = W.eval_prompts(args.eval_prompts or None)
    base_cfg = apply_overrides(get_preset(args.preset), ["eval.every=0", "log.progress=false", *args.overrides])
    model, _, _ = train_build.build_model(base_cfg)
    t = time.time()
    before = compositional_accuracy(model, base_cfg, prompts, args.eval_seeds)
    eval_s = time.time() - t
    del model
    rows = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = apply_overrides(
                get_preset(args.preset),
                [
                    "train.iterations=100000",
                    f"train.max_minutes={args.minutes}",
                    f"train.seed={seed}",
                    "eval.every=0",
                    "log.progress=false",
                    f"train.output_dir={tmp}/run",
                    "train.save_every=1000000",
                    *args.overrides,
                ],
            )
            t = time.time()
            res = train_run.main(cfg)
            minutes = (time.time() - t) / 60
            after = compositional_accuracy(res.model, cfg, prompts, args.eval_seeds)
            hist = res.history
            rows.append(
                {
                    "seed": seed,
                    "iterations": res.state.iteration,
                    "minutes": minutes,
                    "reward_first": hist[0]["reward/total_mean"],
                    "reward_last": hist[-1]["reward/total_mean"],
                    **{f"after_{k}": v for k, v in after.items()},
                }
            )
            print(
                f"seed {seed}: {res.state.iteration} iterations in {minutes:.1f} min, compositional_acc "
                f"{before['compositional_acc']:.3f} -> {after['compositional_acc']:.3f}",
                flush=True,
            )
    accs = [r["after_compositional_acc"] for r in rows]
    b = before["compositional_acc"]
    goal = b + (1 - b) / 2
    print(f"\nheld-out prompts: {len(prompts)} x {args.eval_seeds} seeds ({eval_s:.0f} s per eval)")
    keys = [
        "compositional_acc",
        "color_acc",
        "shape_acc",
        "count_acc",
        "position_acc",
        "kind_count_acc",
        "kind_pair_acc",
        "kind_position_acc",
    ]
    print(f"{'metric':<20} {'before':>8} " + " ".join(f"{'seed ' + str(r['seed']):>8}" for r in rows))
    for k in keys:
        print(
            f"{k:<20} {before.get(k, float('nan')):8.3f} "
            + " ".join(f"{r.get('after_' + k, float('nan')):8.3f}" for r in rows)
        )
    for k in ("iterations", "minutes", "reward_first", "reward_last"):
        print(f"{k:<20} {'':>8} " + " ".join(f"{r[k]:8.3f}" if isinstance(r[k], float) else f"{r[k]:8d}" for r in rows))
    mean = statistics.mean(accs)
    out = {
        "compositional_acc_before": round(b, 4),
        "compositional_acc_after_mean": round(mean, 4),
        "compositional_acc_after_std": round(statistics.pstdev(accs) if len(accs) > 1 else 0.0, 4),
        "minutes": args.minutes,
        "seeds": args.seeds,
        "preset": args.preset,
        "goal": round(goal, 4),
        "goal_met": mean >= goal,
        "iterations_mean": statistics.mean(r["iterations"] for r in rows),
        "eval_images": len(prompts) * args.eval_seeds,
    }
    print(json.dumps(out))
    return 0


QUICK = [
    'reward.weights={"testbed_aesthetic": 1.0}',
    "eval.metrics={}",
    "sample.num_steps=6",
    "sample.groups_per_iteration=1",
    "sample.group_size=8",
    "sample.batch_size=8",
    "sample.window.options.start=0",
    "optim.steps_per_iteration=1",
    "optim.lr=2e-3",
    "train.max_minutes=0.6",
]


def quick(args: argparse.Namespace) -> int:
    """~35 s of training on the testbed pipeline with its smooth aesthetic-proxy reward, 8 images of
    one fixed prompt per iteration and the SDE window fixed on the first two steps (so iterations are
    comparable): the reward of the first third of the iterations vs the last third. (The
    compositional reward needs minutes to move beyond its per-prompt noise.)"""
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/prompts.txt", "w") as f:
            f.write("two blue squares\n")
        cfg = apply_overrides(
            get_preset("testbed"),
            [
                "train.iterations=100000",
                "eval.every=0",
                "log.progress=false",
                f"train.output_dir={tmp}/run",
                "train.save_every=1000000",
                f"data.train={tmp}/prompts.txt",
                *QUICK,
                *args.overrides,
            ],
        )
        t = time.time()
        res = train_run.main(cfg)
        seconds = time.time() - t
    r = [h["reward/total_mean"] for h in res.history]
    k = max(1, len(r) // 3)
    first, last = statistics.mean(r[:k]), statistics.mean(r[-k:])
    print(f"\n{'iteration':>9} {'reward':>8}")
    for i, v in enumerate(r):
        print(f"{i:9d} {v:8.4f}")
    print(f"mean reward ({list(cfg.reward.weights)[0]}), first {k} vs last {k} iterations: {first:.4f} -> {last:.4f}")
    print(
        json.dumps(
            {
                "quick": True,
                "reward": list(cfg.reward.weights)[0],
                "iterations": len(r),
                "seconds": round(seconds, 1),
                "reward_first": round(first, 4),
                "reward_last": round(last, 4),
                "rising": last > first,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
