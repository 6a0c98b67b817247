"""Reward hacking and the artifact regulariser on the testbed (issue 6): one command, one figure.

    python benchmarks/bench_artifact_reg.py                  # 2 runs x --iterations (~20 min on 2 loaded cores)
    python benchmarks/bench_artifact_reg.py --quick          # <= 60 s: a few iterations, same outputs

Two Flow-GRPO runs from the same weights and seed on the hackable aesthetic proxy
(``testbed_aesthetic``: it likes saturation, contrast and edge energy, which noise, checkerboards and
over-saturation also give):
* ``proxy``: the proxy alone, no KL;
* ``regularized``: the proxy + ``--artifact-weight`` x the artifact detector's clean score
  (``testbed_artifact`` = 1 - P(artifact)), summed then group-normalised as in the ArtifactReward
  recipe (``MultiReward``), + a KL to the base model (``--beta``) — the ``testbed_artifact_reg`` preset.
Every ``--eval-every`` iterations the trainer samples the held-out prompts with the ODE sampler and
fixed noise and records the proxy, the detector's P(artifact) and compositional accuracy (the
checker's strict all-clauses verdict, the GenEval analogue). Writes ``<out>/artifact_reg.png``
(three panels over training, both runs) and ``<out>/artifact_reg.json`` (the curves); prints a table
and, as the last line, a JSON summary (first / last value of each metric per run and the paths).
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
    'reward.weights={"testbed_aesthetic": 1.0}',
]
METRICS = {
    "aesthetic": {"reward": "testbed_aesthetic"},
    "artifact": {"reward": "testbed_artifact"},
    "accuracy": {"reward": "compositional", "output": "strict"},
}


def plot(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("aesthetic", "proxy reward (testbed_aesthetic)"),
        ("artifact_prob", "detector P(artifact)"),
        ("accuracy", "compositional accuracy (strict)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, panels):
        for name, style in (("proxy", "-o"), ("regularized", "-s")):
            pts = curves.get(name, [])
            ax.plot([p["iteration"] for p in pts], [p[key] for p in pts], style, ms=3, label=name)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, the output folder and both runs' config through ``flowalign train``'s start-up checks:
    a bad value is one argparse error before anything loads (not after two training runs)."""
    from flowalign.cli import bounded
    from flowalign.steering.config import check_output
    from flowalign.train.checks import validate

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pos, nonneg = bounded(int, "[1, inf)"), bounded(float, "[0, inf)")
    ap.add_argument("--iterations", type=pos, default=120, help="training iterations per run")
    ap.add_argument("--eval-every", type=pos, default=10, help="iterations between evals")
    ap.add_argument("--eval-prompts", type=pos, default=64, help="held-out prompts per eval (one fixed noise each)")
    ap.add_argument("--artifact-weight", type=nonneg, default=5.0, help="weight of the detector's clean score")
    ap.add_argument("--beta", type=nonneg, default=0.04, help="KL weight of the regularized run (objective beta)")
    ap.add_argument("--seed", type=bounded(int, "[0, inf)"), default=0)
    ap.add_argument("--out", default="runs/artifact_reg", help="folder for artifact_reg.png / .json")
    ap.add_argument("--quick", action="store_true", help="<= 60 s: 3 iterations, 8 eval prompts")
    ap.add_argument("--threads", type=pos, default=1)
    ap.add_argument("overrides", nargs="*", help="extra config overrides for both runs")
    args = ap.parse_args(argv)
    try:
        check_output(args.out, "--out")
        for beta in (0.0, args.beta):
            validate(apply_overrides(get_preset("testbed"), [*BASE, f"objective.options.beta={beta}", *args.overrides]))
    except ValueError as err:
        ap.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from flowalign.rewards import MultiReward, load_reward
    from flowalign.train.build import build_eval_metrics, build_model
    from flowalign.train.data import PromptSet, load_prompt_source
    from flowalign.train.loop import train

    t_start = time.time()
    iters, every, n_eval = (3, 3, 8) if args.quick else (args.iterations, args.eval_every, args.eval_prompts)
    base = BASE + [
        f"train.iterations={iters}",
        f"eval.every={every}",
        f"eval.num_prompts={n_eval}",
        f"train.seed={args.seed}",
        *args.overrides,
    ]
    cfg0 = apply_overrides(get_preset("testbed"), base)
    cfg0.eval.metrics = dict(METRICS)
    model = build_model(cfg0)[0]
    init = {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}
    metrics = build_eval_metrics(cfg0)
    proxy = load_reward("testbed_aesthetic")
    runs = {
        "proxy": (proxy, 0.0),
        "regularized": (
            MultiReward(
                {"testbed_aesthetic": 1.0, "testbed_artifact": args.artifact_weight},
                rewards={"testbed_aesthetic": proxy, "testbed_artifact": load_reward("testbed_artifact")},
            ),
            args.beta,
        ),
    }
    train_prompts = load_prompt_source("testbed:train")
    test = load_prompt_source("testbed:test")
    eval_prompts = PromptSet(test.prompts[:n_eval], test.metadata[:n_eval])
    curves: dict[str, list[dict]] = {}
    walls = {}
    for name, (reward, beta) in runs.items():
        with torch.no_grad():
            for n, p in model.transformer.named_parameters():
                if n in init:
                    p.copy_(init[n])
        with tempfile.TemporaryDirectory() as tmp:
            cfg = apply_overrides(
                get_preset("testbed"), base + [f"objective.options.beta={beta}", f"train.output_dir={tmp}/run"]
            )
            t = time.time()
            res = train(
                cfg, model, reward, train_prompts, eval_prompts=eval_prompts, run_dir=f"{tmp}/run", eval_metrics=metrics
            )
            walls[name] = time.time() - t
        curves[name] = [
            {
                "iteration": e["iteration"],
                "nfe": e["nfe"],
                "aesthetic": e["eval/aesthetic"],
                "artifact_prob": 1.0 - e["eval/artifact"],
                "accuracy": e["eval/accuracy"],
                "train_reward": None,
            }
            for e in res.evals
        ]
        for e in curves[name]:
            h = [x for x in res.history if x["iteration"] < e["iteration"]]
            e["train_reward"] = h[-1]["reward/total_mean"] if h else None
        print(f"{name}: {res.state.iteration} iterations, {res.nfe} NFE, {walls[name]:.0f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, data = out / "artifact_reg.png", out / "artifact_reg.json"
    title = (
        f"testbed: Flow-GRPO on the aesthetic proxy, with / without the artifact regulariser "
        f"(weight {args.artifact_weight}, KL beta {args.beta}); {n_eval} held-out prompts, seed {args.seed}"
    )
    plot(curves, fig, title)
    data.write_text(
        json.dumps(
            {
                "config": {
                    "iterations": iters,
                    "eval_every": every,
                    "eval_prompts": n_eval,
                    "artifact_weight": args.artifact_weight,
                    "beta": args.beta,
                    "seed": args.seed,
                    "overrides": base,
                },
                "curves": curves,
                "wall_s": walls,
            },
            indent=1,
        )
    )
    print(f"\n{'run':<12} {'iteration':>9} {'NFE':>7} {'proxy':>8} {'P(artifact)':>12} {'accuracy':>9}")
    for name, pts in curves.items():
        for p in pts:
            print(
                f"{name:<12} {p['iteration']:9d} {p['nfe']:7d} {p['aesthetic']:8.3f} {p['artifact_prob']:12.3f} "
                f"{p['accuracy']:9.3f}"
            )
    print(f"figure: {fig}\ncurves: {data}\ntotal {time.time() - t_start:.0f} s")
    summary = {
        name: {
            f"{k}_{w}": round(pts[i][k], 4)
            for k in ("aesthetic", "artifact_prob", "accuracy")
            for w, i in (("first", 0), ("last", -1))
        }
        for name, pts in curves.items()
    }
    print(json.dumps({**summary, "figure": str(fig), "json": str(data)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
