"""Credit variants on the testbed under an equal sampler-NFE budget (issue 6).

    python benchmarks/bench_credit.py --seeds 3     # the full comparison (~20-25 min on 2 loaded cores)
    python benchmarks/bench_credit.py --quick       # <= 60 s: one seed, a tiny budget

Trains Flow-GRPO (group advantages), DenseGRPO (step gains of a reward ladder), TP-GRPO (turning
points), G^2RPO (singular sampling + multi-granularity advantages), tree rollouts with BranchGRPO and
TreeGRPO credit, GRPO-Guard (Flow-GRPO's credit with ``objective.kind=grpo_guard``: RatioNorm +
1/Delta step reweighting, arXiv 2510.22319), AC-Flow (a critic's per-step advantages), TempFlow-GRPO
(branch-mean process rewards, noise-aware step weights), GARDO (KL on the uncertain rows only, the
artifact detector as the disagreeing reward; diversity-aware advantages), Dynamic-TreeRPO (TreeGRPO +
LayerTuning's weighted SFT term and adaptive clip bounds), Pref-GRPO (the group win rate) and PAR
(sigmoid of the reward minus its group mean; its final reward is read on ``--reward``) on the
shapes-world pipeline, each until it has spent
``--budget`` sampler NFEs (``train.max_nfe``: rollouts + ladder / stride completions, velocity
evaluations per image, CFG counted once; training forwards and evals not counted, so neither is
GRPO-Guard's no-grad recompute of the sampling means per trained (sample, step)). Every variant
samples with the same 3-step SDE window (random start in the first 5 of 6 steps; G^2RPO: its single
SDE step in the first half), one initial noise per group whose ODE prefix is computed once
(``sample.share_prefix``); the trees branch in two at every window step (8 leaves = the group).
Reward: the testbed's smooth aesthetic proxy by default (``--reward``), because the compositional
checker needs far more than this budget to move. Every ``budget / 4`` NFEs the trainer evaluates the
held-out prompts (ODE, fixed noise); the final eval gives ``final_reward_*`` and ``final_accuracy_*``
(held-out compositional strict accuracy: every clause holds, the ``testbed`` preset's
``eval.metrics``; steps of 1/16 with 16 prompts), and the curve (mean over seeds, linear in NFE) gives
the NFE at which a variant first reaches Flow-GRPO's final mean (null = never within the budget). ``wall_s``: sampling
+ collection + training seconds per run (evals excluded), mean over seeds; ``cpu_s`` (extra key): the
process CPU seconds of the run, evals included (the same 5 evals for every variant) — less sensitive
than wall time to other jobs on a shared machine.

Prints a table, then one JSON object as the last line:
{variant: {"final_reward_mean", "final_reward_std", "nfe", "wall_s", "cpu_s", "nfe_to_reach_flow_grpo_final",
"final_accuracy_mean", "final_accuracy_std"}}. ``--variants flow_grpo,grpo_guard`` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from flowalign.overrides import apply_overrides  # noqa: E402
from flowalign.train.config import RENAMED  # noqa: E402
from flowalign.train.presets import get_preset  # noqa: E402

WINDOW = ["sample.window.kind=random", "sample.window.options.size=3", "sample.window.options.range=[0,5]"]
TREE = ["credit.options.splits=[0,1,2]", "credit.options.branch=[2]"]  # offsets in the window: 2 x 2 x 2 = 8 leaves
GARDO = ['credit.options.auxiliary=["testbed_artifact"]', "credit.scale=none", "objective.options.beta=0.04"]
DTREE = ["credit.options.depth_noise=0.5"]  # Dynamic-TreeRPO: noise x (1 + 0.5 depth / #splits)
G2RPO_WINDOW = ["sample.window.options.size=1", "sample.window.options.range=[0,3]"]
VARIANTS = {
    "flow_grpo": ["credit.kind=grpo"],
    "dense": ["credit.kind=dense"],
    "turning_point": ["credit.kind=turning_point"],
    "g2rpo": ["credit.kind=g2rpo", *G2RPO_WINDOW, "credit.options.strides=[1,2,3]"],
    "branchgrpo": ["credit.kind=branchgrpo", *TREE],
    "treegrpo": ["credit.kind=treegrpo", *TREE],
    "grpo_guard": ["credit.kind=grpo", "objective.kind=grpo_guard"],
    "ac_flow": ["credit.kind=ac_flow"],
    "tempflow_grpo": ["credit.kind=tempflow_grpo", *TREE],
    "gardo": ["credit.kind=gardo", *GARDO, "objective.kind=gardo"],
    "dynamic_treerpo": ["credit.kind=treegrpo", *TREE, *DTREE, "objective.kind=dynamic_treerpo"],
    "pref_grpo": ["credit.kind=pref_grpo"],
    "par": ['reward.weights={"par": 1.0}'],  # PAR around --reward (run_one sets reward.options.par.base)
}
OWN_REWARD = {"par"}  # variants trained on a reward built from their config (evaluated on --reward as "proxy")
ACCURACY = '{"accuracy": {"reward": "compositional", "output": "strict"}}'  # held-out accuracy (testbed preset)
BASE = [
    f"eval.metrics={ACCURACY}",
    "sample.num_steps=6",
    "sample.group_size=8",
    "sample.groups_per_iteration=2",
    "sample.batch_size=8",
    *WINDOW,
    "sample.same_noise=true",
    "sample.share_prefix=true",
    "optim.steps_per_iteration=2",
    "optim.lr=2e-3",
    "objective.options.beta=0",
    "eval.every=0",
    "eval.num_steps=6",
    "eval.batch_size=16",
    "log.progress=false",
    "train.iterations=1000000",
    "train.save_every=1000000",
    "train.ema=false",
]
QUICK = [
    "sample.num_steps=4",
    "sample.groups_per_iteration=1",
    "sample.window.options.range=[0,4]",
    "optim.steps_per_iteration=1",
    "eval.num_steps=4",
]
QUICK_G2RPO = ["sample.window.options.range=[0,2]", "credit.options.strides=[1,2]"]


def curve_at(points: list[tuple[float, float]], x: float) -> float:
    """Linear interpolation of (nfe, reward) points at x (clamped to the ends)."""
    pts = sorted(points)
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / max(x1 - x0, 1e-9)
    return pts[-1][1]


def first_reach(grid: list[float], values: list[float], target: float) -> float | None:
    """Smallest NFE on the piecewise-linear curve (grid, values) at which it reaches target."""
    if values[0] >= target:
        return grid[0]
    for (x0, y0), (x1, y1) in zip(zip(grid, values), zip(grid[1:], values[1:])):
        if y0 < target <= y1:
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return None


def mean_sd(name: str, values: list[float]) -> dict[str, float]:
    """{name_mean, name_std} over seeds (std 0.0 for one seed), rounded to 4 digits."""
    return {
        f"{name}_mean": round(statistics.mean(values), 4),
        f"{name}_std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per variant (train.seed = 0..S-1)")
    ap.add_argument("--budget", type=int, default=1500, help="sampler NFEs per run (train.max_nfe)")
    ap.add_argument("--quick", action="store_true", help="<= 60 s: one seed, 4 steps, an 80-NFE budget")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    ap.add_argument("--reward", default="testbed_aesthetic", help="training and eval reward (rewards.REWARDS)")
    ap.add_argument("--eval-prompts", type=int, default=16, help="held-out prompts per eval")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared 2-core machines)")
    ap.add_argument("--save-runs", default="", help="write the per-seed runs to this JSON (for --merge)")
    ap.add_argument("--merge", nargs="+", default=[], help="--save-runs files of one config split over processes")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every variant")
    args = ap.parse_args(argv)
    args.names = [v for v in args.variants.split(",") if v]
    bad = [v for v in args.names if v not in VARIANTS]
    if bad or ("flow_grpo" not in args.names and not args.save_runs):
        ap.error(f"--variants must include flow_grpo and name only {list(VARIANTS)} (got {bad or args.names}).")
    args.seeds = 1 if args.quick else args.seeds
    args.budget = 80 if args.quick and args.budget == 1500 else args.budget
    args.base = (
        BASE
        + (QUICK if args.quick else [])
        + [
            f'reward.weights={{"{args.reward}": 1.0}}',
            f"eval.num_prompts={4 if args.quick else args.eval_prompts}",
            f"train.max_nfe={args.budget}",
            f"eval.every_nfe={max(1, args.budget // (2 if args.quick else 4))}",
        ]
    )
    return args


def run_one(args, ctx: dict, model, seed: int, v: str) -> dict:
    """Train variant ``v`` from the seed's initial LoRA weights; its NFEs, times and eval points."""
    from flowalign.train.build import build_reward
    from flowalign.train.loop import train

    extra = VARIANTS[v] + (QUICK_G2RPO if args.quick and v == "g2rpo" else [])
    extra += [f'reward.options={{"par": {{"base": "{args.reward}"}}}}'] if v == "par" else []
    with tempfile.TemporaryDirectory() as tmp:
        items = args.base + extra + [f"train.seed={seed}", f"train.output_dir={tmp}/run", *args.overrides]
        cfg = apply_overrides(get_preset("testbed"), items, RENAMED)
        reward = build_reward(cfg) if v in OWN_REWARD else ctx["reward"]
        t, cpu = time.time(), time.process_time()
        res = train(
            cfg, model, reward, ctx["train"], eval_prompts=ctx["eval"], run_dir=f"{tmp}/run",
            eval_metrics=ctx["metrics"],
        )  # fmt: skip
        wall = time.time() - t - sum(e.get("time/eval", 0.0) for e in res.evals)
        cpu = time.process_time() - cpu
    pts = [(float(e["nfe"]), float(e["eval/proxy"])) for e in res.evals]  # --reward, whatever was trained
    print(
        f"seed {seed} {v:<14} {res.state.iteration:4d} it  {res.nfe:6d} NFE  {wall:6.1f} s  {cpu:6.1f} cpu s  "
        + "eval "
        + " ".join(f"{y:.4f}@{x:.0f}" for x, y in pts)
        + f"  accuracy {res.evals[-1].get('eval/accuracy', float('nan')):.4f}",
        flush=True,
    )
    return {
        "seed": seed,
        "nfe": res.nfe,
        "iterations": res.state.iteration,
        "wall_s": wall,
        "cpu_s": cpu,
        "final": pts[-1][1],
        "accuracy": res.evals[-1].get("eval/accuracy", float("nan")),
        "points": pts,
        "train_first": res.history[0]["reward/total_mean"],
        "train_last": res.history[-1]["reward/total_mean"],
    }


def run_all(args) -> dict[str, list[dict]]:
    """{variant: [per-seed run]}: one model load per seed, its LoRA weights reset before every variant."""
    from flowalign.rewards import load_reward
    from flowalign.train.build import build_eval_metrics, build_model
    from flowalign.train.data import PromptSet, load_prompt_source

    test = load_prompt_source("testbed:test")
    ctx = {
        "reward": load_reward(args.reward),
        "train": load_prompt_source("testbed:train"),
        "eval": PromptSet(test.prompts[: args.eval_prompts], test.metadata[: args.eval_prompts]),
        # the checker's accuracy and --reward as "proxy" (the final reward of every variant, PAR's included)
        "metrics": {
            **build_eval_metrics(apply_overrides(get_preset("testbed"), args.base, RENAMED)),
            "proxy": load_reward(args.reward),
        },
    }
    runs: dict[str, list[dict]] = {v: [] for v in args.names}
    for seed in range(args.seeds):
        cfg0 = apply_overrides(get_preset("testbed"), args.base + [f"train.seed={seed}", *args.overrides], RENAMED)
        model = build_model(cfg0)[0]
        init = {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}
        for v in args.names:
            with torch.no_grad():
                for n, p in model.transformer.named_parameters():
                    if n in init:
                        p.copy_(init[n])
            runs[v].append(run_one(args, ctx, model, seed, v))
            if args.save_runs:  # after every run: an interrupted bench keeps what it finished (seed-major)
                save_runs(args, {k: r for k, r in runs.items() if r}, cfg0)
    args.eval_steps, args.eval_n = cfg0.eval.num_steps, min(cfg0.eval.num_prompts, len(ctx["eval"].prompts))
    return runs


def save_runs(args, runs: dict, cfg) -> None:
    n = min(cfg.eval.num_prompts, args.eval_prompts)
    Path(args.save_runs).write_text(json.dumps({"runs": runs, "eval_steps": cfg.eval.num_steps, "eval_n": n}))


def summarise(runs: dict[str, list[dict]], budget: int) -> tuple[dict, dict, list[float]]:
    """(the JSON object, the mean eval-reward curve per variant on the NFE grid, the grid)."""
    grid = [budget * k / 4 for k in range(5)]
    curves = {}
    for v, rs in runs.items():  # the last eval counts as the budget point (it lies at >= budget)
        per_seed = [[curve_at(r["points"][:-1] + [(float(budget), r["final"])], x) for x in grid] for r in rs]
        curves[v] = [statistics.mean(c[k] for c in per_seed) for k in range(len(grid))]
    target = statistics.mean(r["final"] for r in runs["flow_grpo"])
    out = {}
    for v, rs in runs.items():
        reach = first_reach(grid, curves[v], target)
        out[v] = {
            **mean_sd("final_reward", [r["final"] for r in rs]),
            "nfe": round(statistics.mean(r["nfe"] for r in rs), 1),
            "wall_s": round(statistics.mean(r["wall_s"] for r in rs), 1),
            "cpu_s": round(statistics.mean(r["cpu_s"] for r in rs), 1),
            "nfe_to_reach_flow_grpo_final": None if reach is None else round(reach, 1),
            **mean_sd("final_accuracy", [r["accuracy"] for r in rs]),
        }
    return out, curves, grid


def print_table(args, runs: dict, out: dict, curves: dict, grid: list[float]) -> None:
    print(
        f"\n{args.reward} on {args.eval_n} held-out prompts (ODE, {args.eval_steps} steps), {args.seeds} seed(s), "
        f"budget {args.budget} sampler NFEs; eval reward (mean over seeds) at NFE = "
        + ", ".join(f"{x:.0f}" for x in grid)
    )
    head = f"{'variant':<14} {'iters':>6} {'NFE/it':>7} {'wall s':>7} {'cpu s':>7} "
    head += " ".join(f"{'@' + format(x, '.0f'):>8}" for x in grid)
    print(head + f" {'final':>15} {'NFE to FG final':>16} {'accuracy':>15}")
    for v, o in out.items():
        iters = statistics.mean(r["iterations"] for r in runs[v])
        reach = o["nfe_to_reach_flow_grpo_final"]
        print(
            f"{v:<14} {iters:6.1f} {o['nfe'] / max(iters, 1):7.1f} {o['wall_s']:7.1f} {o['cpu_s']:7.1f} "
            + " ".join(f"{y:8.4f}" for y in curves[v])
            + f" {o['final_reward_mean']:8.4f}±{o['final_reward_std']:.4f}"
            + f" {'never' if reach is None else format(reach, '.0f'):>16}"
            + f" {o['final_accuracy_mean']:8.4f}±{o['final_accuracy_std']:.4f}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    if args.merge:  # variants split over processes (--save-runs): one table, one JSON
        saved = [json.loads(Path(f).read_text()) for f in args.merge]
        runs = {v: rs for d in saved for v, rs in d["runs"].items()}
        for r in (r for rs in runs.values() for r in rs):
            r["points"] = [tuple(p) for p in r["points"]]  # (JSON keeps them as lists)
        args.eval_steps, args.eval_n = saved[0]["eval_steps"], saved[0]["eval_n"]
        seeds = min(len(rs) for rs in runs.values())  # the seeds every variant finished
        runs, args.seeds = {v: rs[:seeds] for v, rs in runs.items()}, seeds
    else:
        runs = run_all(args)
    if "flow_grpo" not in runs:
        print(f"saved {args.save_runs}; merge it with a part that has flow_grpo (--merge)")
        return 0
    out, curves, grid = summarise(runs, args.budget)
    print_table(args, runs, out, curves, grid)
    print(f"total {time.time() - t_start:.0f} s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
