"""Reward hacking and its mitigations on the testbed (issues 6, 23): one command, one table, one figure.

    python benchmarks/bench_artifact_reg.py                 # 7 runs x 3 seeds x --iterations
    python benchmarks/bench_artifact_reg.py --quick         # <= 90 s: 1 seed, 2 iterations, same outputs

Flow-GRPO from the same base weights on the hackable aesthetic proxy (``testbed_aesthetic``: it likes
saturation, contrast and edge energy, which noise, checkerboards and over-saturation also give), with
each mitigation (every run: same sampler, seeds, optimizer and budget):
* ``proxy``: the proxy alone, no KL;                 * ``kl``: the proxy + KL to the base (``--beta``);
* ``artifact_reg``: proxy + ``--artifact-weight`` x the detector's clean score (1 - P(artifact)), summed then
  group-normalised (the ArtifactReward recipe, ``testbed_artifact_reg``), + KL;
* ``gardo``: GARDO (arXiv 2512.24138; ``testbed_gardo``): the proxy, with the KL only on the rows whose proxy
  rank most exceeds the detector's, a periodically refreshed reference, diversity-aware advantages;
* ``par``: PAR (arXiv 2502.18770), sigmoid(proxy - group-mean proxy), + KL;
* ``ensemble_min``: min(proxy, detector clean score) (a worst-case ensemble, Coste et al. 2023), + KL;
* ``early_stop``: the proxy alone, stopped when the held-out gold score (``GOLD`` below) has not improved
  for ``--patience`` evals; the weights of its best eval are kept (``eval.early_stop``).
Every ``--eval-every`` iterations the trainer samples the held-out prompts (ODE, fixed noise) and records
the proxy, the detector's P(artifact), compositional accuracy (the checker's strict all-clauses verdict,
the GenEval analogue) and the gold score. After each run, ``diversity``: ``--diversity-samples`` images
of each of 8 held-out prompts (ODE, distinct noises), 16x16 average-pooled pixels, the mean pairwise L2
distance within a prompt (``rewards/diversity.py``). Per run, mean +- sd over seeds of: ``proxy_gain``
(last - first eval), ``artifact_prob``, ``accuracy`` and ``diversity`` at the end. Writes
``<out>/artifact_reg.png`` (curves, mean over seeds; and final accuracy vs P(artifact)) and
``<out>/artifact_reg.json``; the last line is a JSON summary incl. ``beats_artifact_reg``: the runs whose
mean accuracy exceeds artifact_reg's with a mean P(artifact) no higher than artifact_reg's + 0.02.
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

from flowalign.train import apply_overrides, get_preset  # noqa: E402

BASE = [
    "sample.num_steps=6",
    "sample.group_size=8",
    "sample.groups_per_iteration=2",
    "sample.batch_size=8",
    "sample.window.kind=random",
    "sample.window.options.size=3",
    "sample.window.options.range=[0,5]",
    "sample.share_prefix=true",
    "optim.steps_per_iteration=2",
    "optim.lr=2e-3",
    "eval.num_steps=6",
    "eval.batch_size=32",
    "log.progress=false",
    "train.save_every=1000000",
    "train.ema=false",
]
# The gold score of early stopping (and the ensemble_min reward): the worst case of the proxy and 5 x the
# detector's clean score; on clean images (clean score ~1, proxy ~5) it is the proxy, on artifacts it falls.
MEMBERS = {"testbed_aesthetic": {}, "testbed_artifact": {"scale": 5.0}}
GOLD = {"reward": "ensemble", "members": MEMBERS, "aggregate": "min"}
METRICS = {
    "aesthetic": {"reward": "testbed_aesthetic"},
    "artifact": {"reward": "testbed_artifact"},
    "accuracy": {"reward": "compositional", "output": "strict"},
    "gold": GOLD,
}
PROXY = ['reward.weights={"testbed_aesthetic": 1.0}']
ENSEMBLE = json.dumps({"ensemble": {"members": MEMBERS, "aggregate": "min"}})


def runs(artifact_weight: float, beta: float, patience: int) -> dict[str, list[str]]:
    """Run name -> config overrides on top of BASE (the ``testbed`` preset)."""
    kl = f"objective.options.beta={beta}"
    both = f'reward.weights={{"testbed_aesthetic": 1.0, "testbed_artifact": {artifact_weight}}}'
    return {
        "proxy": [*PROXY, "objective.options.beta=0"],
        "kl": [*PROXY, kl],
        "artifact_reg": [both, kl],
        "gardo": GARDO,
        "par": ['reward.weights={"par": 1.0}', 'reward.options={"par": {"base": "testbed_aesthetic"}}', kl],
        "ensemble_min": ['reward.weights={"ensemble": 1.0}', f"reward.options={ENSEMBLE}", kl],
        "early_stop": [
            *PROXY,
            "objective.options.beta=0",
            "eval.early_stop=gold",
            f"eval.early_stop_patience={patience}",
        ],
    }


GARDO = [  # the testbed_gardo preset's credit and objective: the detector is the reward the proxy disagrees with
    "credit.kind=gardo",
    'credit.options.auxiliary=["testbed_artifact"]',
    "credit.scale=none",
    *PROXY,
    "objective.kind=gardo",
    "objective.options.beta=0.04",
]


def config(args, name: str, seed: int, run_dir: str | None = None):
    cfg = apply_overrides(
        get_preset("testbed"),
        [
            *BASE,
            *args.runs[name],
            f"train.iterations={args.iters}",
            f"eval.every={args.every}",
            f"eval.num_prompts={args.n_eval}",
            f"train.seed={seed}",
            *([f"train.output_dir={run_dir}"] if run_dir else []),
            f"eval.metrics={json.dumps(METRICS)}",
            *args.overrides,
        ],
    )
    return cfg


@torch.no_grad()
def diversity(model, cfg, prompts: list[str], k: int) -> float:
    """Mean pairwise distance of 16x16 pixel features within each prompt's ``k`` ODE samples."""
    from flowalign.rewards.diversity import pairwise_diversity, pixel_features
    from flowalign.train.data import generators
    from flowalign.train.evaluation import generate

    texts = [p for p in prompts for _ in range(k)]
    gens = generators(cfg.eval.seed + 1, 0, list(range(len(texts))), model.device)
    e = cfg.eval
    _, _, images = generate(
        model, texts, cfg, gens, num_steps=e.num_steps, guidance_scale=e.guidance_scale, noise_levels=None
    )
    return pairwise_diversity(pixel_features(images), [i // k for i in range(len(texts))])


def one_run(args, model, init: dict, name: str, seed: int, data) -> dict:
    """Reset the weights, train one (run, seed), return its eval curve, diversity, stop and wall time."""
    from flowalign.train.build import build_eval_metrics, build_reward
    from flowalign.train.loop import train

    with torch.no_grad():
        for n, p in model.transformer.named_parameters():
            if n in init:
                p.copy_(init[n])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(args, name, seed, f"{tmp}/run")
        t = time.time()
        res = train(
            cfg,
            model,
            build_reward(cfg),
            data["train"],
            eval_prompts=data["eval"],
            run_dir=f"{tmp}/run",
            eval_metrics=build_eval_metrics(cfg),
        )
        wall = time.time() - t
    curve = [
        {
            "iteration": e["iteration"],
            "aesthetic": e["eval/aesthetic"],
            "artifact_prob": 1.0 - e["eval/artifact"],
            "accuracy": e["eval/accuracy"],
            "gold": e["eval/gold"],
        }
        for e in res.evals
    ]
    div = diversity(model, cfg, data["eval"].prompts[: 4 if args.quick else 8], args.diversity_samples)
    print(f"{name} seed {seed}: {res.state.iteration} iterations, {wall:.0f} s, diversity {div:.4f}", flush=True)
    return {"seed": seed, "curve": curve, "diversity": div, "wall_s": wall, "early_stop": res.early_stop}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def final(r: dict) -> dict:
    """The eval of the model a run leaves: its last, or the restored best one of an early stop."""
    stop = r.get("early_stop")
    return next(p for p in r["curve"] if p["iteration"] == stop["iteration"]) if stop else r["curve"][-1]


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per run, mean and sd over seeds of the final metrics, the proxy gain and the diversity."""
    out = {}
    for name, per_seed in results.items():
        cols = {
            "proxy_gain": [final(r)["aesthetic"] - r["curve"][0]["aesthetic"] for r in per_seed],
            "artifact_prob": [final(r)["artifact_prob"] for r in per_seed],
            "accuracy": [final(r)["accuracy"] for r in per_seed],
            "diversity": [r["diversity"] for r in per_seed],
            "wall_s": [r["wall_s"] for r in per_seed],
        }
        row = {}
        for k, v in cols.items():
            m, sd = mean_sd(v)
            row[f"{k}_mean"], row[f"{k}_std"] = round(m, 4), round(sd, 4)
        out[name] = row
    ref = out.get("artifact_reg")
    if ref:
        out["beats_artifact_reg"] = [
            n
            for n, r in out.items()
            if n != "artifact_reg"
            and r["accuracy_mean"] > ref["accuracy_mean"]
            and r["artifact_prob_mean"] <= ref["artifact_prob_mean"] + 0.02
        ]
    return out


def mean_curve(per_seed: list[dict], key: str) -> tuple[list[int], list[float]]:
    """The eval curve of ``key`` averaged over seeds at the iterations every seed evaluated."""
    common = sorted(set.intersection(*({p["iteration"] for p in r["curve"]} for r in per_seed)))
    vals = [statistics.mean(next(p[key] for p in r["curve"] if p["iteration"] == i) for r in per_seed) for i in common]
    return common, vals


def plot(results: dict[str, list[dict]], summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("aesthetic", "proxy (testbed_aesthetic)"), ("artifact_prob", "P(artifact)"), ("accuracy", "accuracy")]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (key, label) in zip(axes, panels):
        for name, per_seed in results.items():
            ax.plot(*mean_curve(per_seed, key), "-o", ms=2, label=name)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[3]
    for name in results:
        r = summary[name]
        ax.errorbar(
            r["artifact_prob_mean"], r["accuracy_mean"], xerr=r["artifact_prob_std"], yerr=r["accuracy_std"], fmt="o"
        )
        ax.annotate(name, (r["artifact_prob_mean"], r["accuracy_mean"]), fontsize=7)
    ax.set_xlabel("final P(artifact)")
    ax.set_ylabel("final accuracy")
    ax.set_title("end of run (mean +- sd over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, the output folder and every run's config through ``flowalign train``'s start-up
    checks: a bad value is one argparse error before anything loads."""
    from flowalign.cli import bounded
    from flowalign.steering.config import check_output
    from flowalign.train.checks import validate

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pos, nonneg = bounded(int, "[1, inf)"), bounded(float, "[0, inf)")
    ap.add_argument("--iterations", type=pos, default=40, help="training iterations per run")
    ap.add_argument("--eval-every", type=pos, default=5, help="iterations between evals")
    ap.add_argument("--eval-prompts", type=pos, default=32, help="held-out prompts per eval (one fixed noise each)")
    ap.add_argument("--diversity-samples", type=bounded(int, "[2, inf)"), default=4, help="samples per prompt")
    ap.add_argument("--artifact-weight", type=nonneg, default=5.0, help="weight of the detector's clean score")
    ap.add_argument("--beta", type=nonneg, default=0.04, help="KL weight of the runs with a KL (objective beta)")
    ap.add_argument("--patience", type=pos, default=2, help="evals without a better gold score before early_stop stops")
    ap.add_argument("--seeds", type=pos, default=3, help="training seeds per run (first-seed .. first-seed+S-1)")
    ap.add_argument("--first-seed", type=bounded(int, "[0, inf)"), default=0, help="to split seeds over processes")
    ap.add_argument("--runs", dest="names", default="proxy,kl,artifact_reg,gardo,par,ensemble_min,early_stop")
    ap.add_argument("--out", default="runs/artifact_reg", help="folder for artifact_reg.png / .json")
    ap.add_argument("--quick", action="store_true", help="<= 90 s: 1 seed, 2 iterations, 8 eval prompts")
    ap.add_argument("--threads", type=pos, default=1)
    ap.add_argument("--merge", nargs="+", default=[], help="artifact_reg.json files of runs split over processes")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = ap.parse_args(argv)
    args.runs = runs(args.artifact_weight, args.beta, args.patience)
    args.names = [n for n in args.names.split(",") if n]
    bad = [n for n in args.names if n not in args.runs]
    if bad:
        ap.error(f"--runs names {bad}; choose from {list(args.runs)}.")
    quick = (2, 2, 8, 1) if args.quick else (args.iterations, args.eval_every, args.eval_prompts, args.seeds)
    args.iters, args.every, args.n_eval, args.seeds = quick
    try:
        check_output(args.out, "--out")
        for name in args.names:
            validate(config(args, name, 0))
    except ValueError as err:
        ap.error(str(err))
    return args


def report(args, results: dict, summary: dict, t_start: float) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, data = out / "artifact_reg.png", out / "artifact_reg.json"
    title = (
        f"testbed: Flow-GRPO on the aesthetic proxy and its mitigations; {args.n_eval} held-out prompts, "
        f"{args.seeds} seed(s), {args.iters} iterations"
    )
    plot(results, summary, fig, title)
    cfg = {k: getattr(args, k) for k in ("iters", "every", "n_eval", "seeds", "artifact_weight", "beta", "patience")}
    data.write_text(
        json.dumps({"config": {**cfg, "runs": args.runs}, "results": results, "summary": summary}, indent=1)
    )
    print(f"\n{'run':<13} {'proxy gain':>14} {'P(artifact)':>14} {'accuracy':>14} {'diversity':>14}")
    for name in results:
        r = summary[name]
        cells = [
            f"{r[k + '_mean']:.3f}±{r[k + '_std']:.3f}"
            for k in ("proxy_gain", "artifact_prob", "accuracy", "diversity")
        ]
        print(f"{name:<13} " + " ".join(f"{c:>14}" for c in cells))
    print(f"figure: {fig}\ncurves: {data}\ntotal {time.time() - t_start:.0f} s")
    return {**summary, "figure": str(fig), "json": str(data)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from flowalign.train.build import build_model
    from flowalign.train.data import PromptSet, load_prompt_source

    t_start = time.time()
    if args.merge:  # the same config split by --runs over several processes: one table and figure
        results: dict[str, list[dict]] = {}
        for f in args.merge:  # parts split by --runs and / or --first-seed
            for k, v in json.loads(Path(f).read_text())["results"].items():
                results.setdefault(k, []).extend(v)
        args.seeds = min(len(v) for v in results.values())  # the seeds every run finished
        results = {k: v[: args.seeds] for k, v in results.items()}
        print(json.dumps(report(args, results, summarize(results), t_start)))
        return 0
    model = build_model(config(args, "proxy", 0))[0]
    init = {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}
    test = load_prompt_source("testbed:test")
    data = {
        "train": load_prompt_source("testbed:train"),
        "eval": PromptSet(test.prompts[: args.n_eval], test.metadata[: args.n_eval]),
    }
    results: dict[str, list[dict]] = {n: [] for n in args.names}
    partial = Path(args.out) / "partial.json"
    partial.parent.mkdir(parents=True, exist_ok=True)
    for seed in range(
        args.first_seed, args.first_seed + args.seeds
    ):  # seed-major, saved after every run: an interrupted bench keeps what it finished
        for n in args.names:
            results[n].append(one_run(args, model, init, n, seed, data))
            partial.write_text(json.dumps({"results": results}))
    summary = summarize(results)
    print(json.dumps(report(args, results, summary, t_start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
