"""Reward-gradient and distributional objectives vs the policy-gradient ones on the testbed at equal wall
time (issue 24), and R0's few-step generator vs the base sampled with few steps.

    python benchmarks/bench_reward_grad.py --seeds 3      # the full comparison (6 x 3 runs of --minutes + R0)
    python benchmarks/bench_reward_grad.py --quick        # <= 90 s: 1 seed, a few seconds per run
    # seeds split over processes, then one table and figure:
    python benchmarks/bench_reward_grad.py --seeds 1 --first-seed 1 --out runs/rg1   # ... then
    python benchmarks/bench_reward_grad.py --merge runs/rg0/reward_grad.json runs/rg1/reward_grad.json ...

Six objectives from the same base weights, each with its own ``testbed_<name>`` preset (window, sampler,
learning rate) and the SAME training reward, sizes and time budget (``train.max_minutes``, evals included;
``--clock cpu``, the default, counts the process's CPU time with one thread — the wall time of an idle core,
so runs stay comparable when other processes share the machine): Flow-GRPO (``testbed``), DiffusionNFT
(``testbed_nft``), DRaFT-K (``testbed_draft``), ReFL (``testbed_refl``), Direct-Align
(``testbed_direct_align``) and DRAGON (``testbed_dragon``). The reward is the hackable aesthetic proxy
(``testbed_aesthetic``, differentiable), so reward hacking shows: every ``eval.every`` iterations the trainer
samples the held-out prompts (ODE, fixed noise) and records the proxy, the artifact detector's P(artifact) and
compositional accuracy (strict); after the run, diversity is the mean pairwise distance of pooled pixels
within each prompt's ODE samples. Reported per objective: final proxy reward, held-out accuracy, P(artifact)
and diversity, mean +- sd over seeds, iterations and CPU seconds. Curves (mean over seeds, per iteration) ->
``<out>/reward_grad.json`` + ``.png``.

R0: ``testbed_r0`` (the checker's soft clause score as its reward, as the preset): one generator per step
count of ``--r0-steps`` (2 and 4) trained from the base for the same budget; held-out strict accuracy and proxy
aesthetic of each generator with its own steps (ODE) vs the base with 2, 4 and 20 steps (``r0_acc_4step``,
``base_acc_4step``, ``base_acc_20step``, ...).

Helpers come from the sibling benches: ``bench_artifact_reg`` (eval metrics, diversity, the figure) and
``bench_credit`` (mean +- sd). The last line is one JSON object: {objective: {...}, r0 keys, paths}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_artifact_reg import METRICS, diversity, plot  # noqa: E402
from bench_credit import mean_sd  # noqa: E402

from flowalign.train import apply_overrides, get_preset  # noqa: E402

OBJECTIVES = {  # name -> preset
    "flow_grpo": "testbed",
    "nft": "testbed_nft",
    "draft": "testbed_draft",
    "refl": "testbed_refl",
    "direct_align": "testbed_direct_align",
    "dragon": "testbed_dragon",
}
GRADIENT = ("draft", "refl", "direct_align")
BASE = [
    'reward.weights={"testbed_aesthetic": 1.0}',
    "reward.options={}",
    "eval.batch_size=32",
    "log.progress=false",
    "train.iterations=1000000",
    "train.save_every=1000000",
    "train.ema=false",
]
FULL = ["sample.group_size=8", "sample.groups_per_iteration=2", "sample.batch_size=8", "optim.steps_per_iteration=2"]
QUICK = ["sample.group_size=4", "sample.groups_per_iteration=1", "sample.batch_size=4", "optim.steps_per_iteration=1"]
QUICK += ["sample.num_steps=4", "eval.num_steps=4"]
QUICK_WINDOWS = {  # the presets' windows moved onto the quick 4-step grid
    "draft": ["sample.window.options.start=3"],
    "refl": ["sample.window.options.range=[2,4]"],
    "direct_align": ["sample.window.options.range=[0,4]"],
}
R0_REWARD = ['reward.weights={"compositional": 1.0}', 'reward.options={"compositional": {"output": "soft"}}']
R0_METRICS = {"accuracy": {"reward": "compositional", "output": "strict"}, "aesthetic": {"reward": "testbed_aesthetic"}}


def config(args, preset: str, seed: int, run_dir: str, extra: list[str] = ()):
    metrics = {k: v for k, v in METRICS.items() if k in ("aesthetic", "artifact", "accuracy")}
    items = [
        *BASE,
        *(QUICK if args.quick else FULL),
        f"train.max_minutes={args.minutes}",
        f"train.budget_clock={args.clock}",
        f"eval.every={args.every}",
        f"eval.num_prompts={args.n_eval}",
        f"eval.metrics={json.dumps(metrics)}",
        f"train.seed={seed}",
        f"train.output_dir={run_dir}",
        *extra,
        *args.overrides,
    ]
    return apply_overrides(get_preset(preset), items)


def reset(model, init: dict) -> None:
    with torch.no_grad():
        for n, p in model.transformer.named_parameters():
            if n in init:
                p.copy_(init[n])


def one_run(args, model, init: dict, name: str, seed: int, data) -> dict:
    """Reset to the base, train one (objective, seed) for the wall budget; its curve, diversity and time."""
    from flowalign.train.build import build_eval_metrics, build_reward
    from flowalign.train.loop import train

    reset(model, init)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(args, OBJECTIVES[name], seed, f"{tmp}/run", QUICK_WINDOWS.get(name, []) if args.quick else [])
        t, cpu = time.time(), time.process_time()
        res = train(
            cfg, model, build_reward(cfg), data["train"], eval_prompts=data["eval"], run_dir=f"{tmp}/run",
            eval_metrics=build_eval_metrics(cfg),
        )  # fmt: skip
        wall, cpu = time.time() - t, time.process_time() - cpu
    curve = [
        {
            "iteration": e["iteration"],
            "aesthetic": e["eval/aesthetic"],
            "artifact_prob": 1.0 - e["eval/artifact"],
            "accuracy": e["eval/accuracy"],
        }
        for e in res.evals
    ]
    div = diversity(model, cfg, data["eval"].prompts[: args.n_eval], args.k)
    print(
        f"{name:<13} seed {seed}: {res.state.iteration:3d} it {wall:6.1f} s  proxy {curve[-1]['aesthetic']:.3f}  "
        f"P(artifact) {curve[-1]['artifact_prob']:.3f}  accuracy {curve[-1]['accuracy']:.3f}  diversity {div:.4f}",
        flush=True,
    )
    return {"curve": curve, "diversity": div, "wall_s": wall, "cpu_s": cpu, "iterations": res.state.iteration}


@torch.no_grad()
def score_at(model, cfg, prompts: list[str], num_steps: int, scorers: dict) -> dict[str, float]:
    """Mean of each scorer over ODE samples of ``prompts`` with ``num_steps`` steps (fixed eval noise)."""
    from flowalign.train.data import generators
    from flowalign.train.evaluation import generate

    gens = generators(cfg.eval.seed, 0, list(range(len(prompts))), model.device)
    _, _, images = generate(
        model, prompts, cfg, gens, num_steps=num_steps, guidance_scale=cfg.eval.guidance_scale, noise_levels=None
    )
    return {k: float(fn(images, prompts).mean()) for k, fn in scorers.items()}


def r0_run(args, model, init: dict, seed: int, data) -> dict:
    """The base at 2 / 4 / 20 steps; then, per step count in ``--r0-steps``, R0's generator trained for the
    budget with that many steps from the base, scored with the same steps (``r0_acc_4step``: the 4-step one)."""
    from flowalign.rewards import load_reward
    from flowalign.train.build import build_reward
    from flowalign.train.loop import train

    scorers = {
        k: load_reward(v["reward"], **{a: b for a, b in v.items() if a != "reward"}) for k, v in R0_METRICS.items()
    }
    prompts = data["eval"].prompts[: args.n_eval]
    reset(model, init)
    out = {}
    for steps in sorted({2, 4, 20, *args.r0_steps}):
        cfg = config(args, "testbed_r0", seed, "unused", [*R0_REWARD, "eval.every=0"])
        for k, v in score_at(model, cfg, prompts, steps, scorers).items():
            out[f"base_{k[:3]}_{steps}step"] = v
    for steps in args.r0_steps:
        reset(model, init)
        with tempfile.TemporaryDirectory() as tmp:
            grid = [f"sample.num_steps={steps}", f"eval.num_steps={steps}"]
            cfg = config(args, "testbed_r0", seed, f"{tmp}/run", [*R0_REWARD, "eval.every=0", *grid])
            cpu = time.process_time()
            res = train(cfg, model, build_reward(cfg), data["train"], eval_prompts=data["eval"], run_dir=f"{tmp}/run")
            out[f"r0_cpu_s_{steps}step"], out[f"r0_iterations_{steps}step"] = (
                time.process_time() - cpu,
                res.state.iteration,
            )
        for k, v in score_at(model, cfg, prompts, steps, scorers).items():
            out[f"r0_{k[:3]}_{steps}step"] = v
    print(f"r0 seed {seed}: " + "  ".join(f"{k} {v:.3f}" for k, v in out.items()), flush=True)
    return out


def summarize(results: dict[str, list[dict]], r0: list[dict]) -> dict:
    """Per objective: mean +- sd over seeds of the final metrics; R0's keys as means (+ _std)."""
    out = {}
    for name, per_seed in results.items():
        row = {}
        row.update(mean_sd("final_reward", [r["curve"][-1]["aesthetic"] for r in per_seed]))
        row.update(mean_sd("accuracy", [r["curve"][-1]["accuracy"] for r in per_seed]))
        row.update(mean_sd("artifact_prob", [r["curve"][-1]["artifact_prob"] for r in per_seed]))
        row.update(mean_sd("diversity", [r["diversity"] for r in per_seed]))
        row["iterations"] = round(sum(r["iterations"] for r in per_seed) / len(per_seed), 1)
        row["wall_s"] = round(sum(r["wall_s"] for r in per_seed) / len(per_seed), 1)
        row["cpu_s"] = round(sum(r.get("cpu_s", 0.0) for r in per_seed) / len(per_seed), 1)
        out[name] = row
    for key in r0[0] if r0 else []:
        m = mean_sd(key, [r[key] for r in r0])
        out[key], out[f"{key}_std"] = m[f"{key}_mean"], m[f"{key}_std"]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from flowalign.cli import bounded

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pos = bounded(int, "[1, inf)")
    ap.add_argument("--seeds", type=pos, default=3, help="seeds per objective (first-seed .. first-seed+S-1)")
    ap.add_argument("--first-seed", type=bounded(int, "[0, inf)"), default=0, help="to split seeds over processes")
    ap.add_argument("--minutes", type=bounded(float, "(0, inf)"), default=3.0, help="time budget per run")
    ap.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu",
        help="what --minutes counts (train.budget_clock): the process's CPU time (default; with --threads 1 it is "
        "the wall time of an idle core, fair when other processes share the machine) or wall time",
    )  # fmt: skip
    ap.add_argument("--merge", nargs="+", default=[], help="reward_grad.json files of seeds split over processes")
    ap.add_argument("--eval-every", type=pos, default=5, help="iterations between evals (the curves)")
    ap.add_argument("--eval-prompts", type=pos, default=16, help="held-out prompts per eval")
    ap.add_argument("--objectives", default=",".join(OBJECTIVES), help="comma-separated subset")
    ap.add_argument("--no-r0", action="store_true", help="skip the R0 few-step part")
    ap.add_argument("--r0-steps", default="2,4", help="R0: one generator trained per step count (comma-separated)")
    ap.add_argument("--out", default="runs/reward_grad", help="folder for reward_grad.png / .json")
    ap.add_argument("--quick", action="store_true", help="<= 90 s: 1 seed, ~5 s per run, 4 eval prompts")
    ap.add_argument("--threads", type=pos, default=1)
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = ap.parse_args(argv)
    args.names = [n for n in args.objectives.split(",") if n]
    args.r0_steps = [int(n) for n in args.r0_steps.split(",") if n]
    if any(not 1 <= n <= 8 for n in args.r0_steps):
        ap.error(f"--r0-steps must be step counts in [1, 8] (R0 trains 2-4 step generators; got {args.r0_steps}).")
    if any(n not in OBJECTIVES for n in args.names):
        ap.error(f"--objectives must name only {list(OBJECTIVES)} (got {args.names}).")
    if args.quick:
        args.seeds, args.minutes, args.every, args.n_eval, args.k = 1, 0.07, 1, 4, 4
    else:
        args.every, args.n_eval, args.k = args.eval_every, args.eval_prompts, 4
    return args


def report(args, results: dict, r0: list[dict], t_start: float) -> dict:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, data = out_dir / "reward_grad.png", out_dir / "reward_grad.json"
    summary = summarize(results, r0)
    title = (
        f"testbed: objectives on the aesthetic proxy at equal {args.clock} time ({args.minutes} min per run, evals "
        f"included), {args.n_eval} held-out prompts, {args.seeds} seed(s)"
    )
    if results:
        plot(results, summary, fig, title)
    data.write_text(json.dumps({"args": vars(args), "summary": summary, "runs": results, "r0": r0}, indent=1))
    print(
        f"\n{'objective':<13} {'iters':>6} {'cpu s':>7} "
        + " ".join(f"{h:>15}" for h in ("proxy", "accuracy", "P(artifact)", "diversity"))
    )
    for n in results:
        s = summary[n]
        print(
            f"{n:<13} {s['iterations']:6.1f} {s['cpu_s']:7.1f} "
            + " ".join(
                f"{s[k + '_mean']:8.4f}±{s[k + '_std']:.4f}"
                for k in ("final_reward", "accuracy", "artifact_prob", "diversity")
            )
        )
    print(f"figure: {fig}\ncurves: {data}\ntotal {time.time() - t_start:.0f} s")
    return {**summary, "figure": str(fig), "json": str(data)}


def save_partial(args, results: dict, r0: list[dict]) -> None:
    out = Path(args.out) / "reward_grad.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": results, "r0": r0}, indent=1))


def merge(args) -> tuple[dict, list[dict]]:
    """The runs and R0 records of ``--merge`` files, cut to the seeds every objective finished."""
    results: dict[str, list[dict]] = {}
    r0: list[dict] = []
    for f in args.merge:
        saved = json.loads(Path(f).read_text())
        for k, v in saved["runs"].items():
            results.setdefault(k, []).extend(v)
        r0 += saved.get("r0", [])
    args.seeds = min((len(v) for v in results.values() if v), default=0)
    return {k: v[: args.seeds] for k, v in results.items() if v}, r0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from flowalign.train.build import build_model
    from flowalign.train.data import PromptSet, load_prompt_source

    t_start = time.time()
    test = load_prompt_source("testbed:test")
    data = {
        "train": load_prompt_source("testbed:train"),
        "eval": PromptSet(test.prompts[: args.n_eval], test.metadata[: args.n_eval]),
    }
    if args.merge:  # the same config split by --first-seed / --objectives over processes: one table, one figure
        results, r0 = merge(args)
        print(json.dumps(report(args, results, r0, t_start)))
        return 0
    results: dict[str, list[dict]] = {n: [] for n in args.names}
    r0: list[dict] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            model = build_model(config(args, "testbed", seed, tmp))[0]
        init = {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}
        for name in args.names:  # seed-major, saved after every run: an interrupted bench keeps what it finished
            results[name].append(one_run(args, model, init, name, seed, data))
            save_partial(args, results, r0)
        if not args.no_r0:
            r0.append(r0_run(args, model, init, seed, data))
            save_partial(args, results, r0)
    print(json.dumps(report(args, results, r0, t_start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
