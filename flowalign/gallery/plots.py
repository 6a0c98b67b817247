"""The ``plots/`` of ``flowalign gallery`` (matplotlib, Agg backend): reward per method, reward vs NFE
per image, and the training curves of each fine-tuned method read from its run's tensorboard logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_scalars(tb_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every scalar in a tensorboard log folder (all its event files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags().get("scalars", [])}


def write_plots(out: Path, summary: dict, rows: list[dict], settings: Any) -> list[str]:
    """plots/rewards.png, plots/reward_vs_nfe.png, plots/training_<method>.png -> relative paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(exist_ok=True)
    ok = [m for m, s in summary.items() if "unavailable" not in s and s["n"]]
    if not ok:
        return []
    files = [_rewards(plt, out, summary, rows, ok, list(settings.rewards))]
    files.append(_reward_vs_nfe(plt, out, summary, ok, list(settings.rewards)))
    for m in settings.methods:
        ck = settings.checkpoints.get(m.label)
        tb = Path(ck.run_dir) / "tb" if ck is not None and ck.run_dir else None
        if tb is not None and tb.is_dir():
            files += _training_curves(plt, out, m, ck, tb)
    return files


def _rewards(plt: Any, out: Path, summary: dict, rows: list[dict], ok: list[str], rewards: list[str]) -> str:
    fig, axes = plt.subplots(1, len(rewards), figsize=(3.2 * len(rewards) + 1, 3.4), squeeze=False)
    for ax, k in zip(axes[0], rewards):
        means = [summary[m]["rewards"][k][0] for m in ok]
        ax.bar(range(len(ok)), means, yerr=[summary[m]["rewards"][k][1] for m in ok], color="#8fb3de", capsize=3)
        for j, m in enumerate(ok):
            vals = [r["rewards"][k] for r in rows if r["method"] == m]
            ax.plot([j + 0.25 * ((i % 5) / 4 - 0.5) for i in range(len(vals))], vals, ".", color="#1f3b73", ms=3)
        ax.set_xticks(range(len(ok)), ok, rotation=30, ha="right")
        ax.set_title(k)
    fig.suptitle("reward per method (mean ± std, dots = images)")
    fig.tight_layout()
    fig.savefig(out / "plots" / "rewards.png", dpi=90)
    plt.close(fig)
    return "plots/rewards.png"


def _reward_vs_nfe(plt: Any, out: Path, summary: dict, ok: list[str], rewards: list[str]) -> str:
    fig, axes = plt.subplots(1, len(rewards), figsize=(3.2 * len(rewards) + 1, 3.2), squeeze=False)
    for ax, k in zip(axes[0], rewards):
        for m in ok:
            s = summary[m]
            ax.errorbar([s["nfe"]], [s["rewards"][k][0]], yerr=[s["rewards"][k][1]], fmt="o", capsize=3, label=m)
        ax.set_xscale("log")
        ticks = sorted({round(summary[m]["nfe"]) for m in ok})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("NFE per image")
        ax.set_title(k)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("reward vs model evaluations")
    fig.tight_layout()
    fig.savefig(out / "plots" / "reward_vs_nfe.png", dpi=90)
    plt.close(fig)
    return "plots/reward_vs_nfe.png"


def _training_curves(plt: Any, out: Path, m: Any, ck: Any, tb: Path) -> list[str]:
    """plots/training_<method>.png from the run's eval/*, reward/total_mean and train/loss scalars."""
    scalars = {
        t: v for t, v in read_scalars(tb).items() if t.startswith("eval/") or t in ("reward/total_mean", "train/loss")
    }
    if not scalars:
        return []
    cols = min(3, len(scalars))
    rows_n = -(-len(scalars) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.0 * cols + 0.5, 2.6 * rows_n + 0.4), squeeze=False)
    for ax in axes.flat[len(scalars) :]:
        ax.axis("off")
    for ax, (tag, points) in zip(axes.flat, sorted(scalars.items())):
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("iteration")
    fig.suptitle(f"training curves of {m.label} ({Path(ck.run_dir).name})")
    fig.tight_layout()
    name = f"plots/training_{m.slug}.png"
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return [name]
