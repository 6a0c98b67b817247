#!/usr/bin/env python
"""Train the shapes-world testbed and write ``assets/testbed/`` (one command, fixed seeds).

    nice -n 10 python scripts/train_testbed.py --out assets/testbed 2>&1 | tee train_testbed.log

Stages (in order; each seeded): VAE -> checker, artifact detector, aesthetic proxy (on fresh
procedural images, with VAE round trips as augmentation) -> SD3 transformer + CLIP encoders
(flow matching) -> save pipeline, scorers, prompt splits, config.json, sample grid -> evaluation.
``--reuse vae,checker,...`` loads those stages from ``--out`` instead of training them (for
iterating on later stages); ``--smoke`` runs every stage for a few steps (a wiring check). The flow
stage is a list of cosine cycles (``flow.cycles``), each continuing from the previous one's EMA
weights. The default: 13000 clean steps, then 1000 with duplicate noise 0.4 (40% of the two-object
captions drawn with their second object twice) -- a base that draws every clause kind and carries a
count failure RL can repair (README). A variant with object neglect instead::

    python scripts/train_testbed.py --out /tmp/testbed_neglect --set 'flow.cycles=[
      {"steps": 4000, "lr": 1.5e-3, "warmup": 200, "seed": 30}, {"steps": 3000, "lr": 1e-3, "warmup": 100, "seed": 77},
      {"steps": 6000, "lr": 1e-3, "warmup": 100, "seed": 79},
      {"steps": 1000, "lr": 1e-3, "warmup": 100, "seed": 81, "caption_noise": 0.5}]'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402  (HF_HUB_OFFLINE and sys.path must be set before these imports)

from flowalign.testbed import pipeline as P  # noqa: E402  (as above)
from flowalign.testbed import scorers as S  # noqa: E402  (as above)
from flowalign.testbed import world as W  # noqa: E402  (as above)

CONFIG = {
    "seed": 0,
    "arch": P.DEFAULT_ARCH,
    "vae": {"steps": 700, "batch": 32, "lr": 2e-3, "kl": 1e-4},
    "checker": {"steps": 1000, "batch": 32, "lr": 2e-3, "p_distort": 0.5, "latent_noise": 0.5},
    "artifact": {"steps": 800, "batch": 32, "lr": 2e-3, "p_distort": 0.3},
    "aesthetic": {"steps": 400, "batch": 32, "lr": 2e-3},
    # flow matching in cosine cycles (warm restarts), each from the previous one's EMA weights, with seed = seed +
    # its offset and optional caption noises (keys of flowalign.testbed.train_flow.NOISES, each a probability)
    "flow": {
        "batch": 32,
        "ema": 0.998,
        "cfg_dropout": 0.1,
        "shift": P.DEFAULT_ARCH["shift"],
        "kind_weights": [0.1, 0.2, 0.25, 0.45],
        "cycles": [
            {"steps": 4000, "lr": 1.5e-3, "warmup": 200, "seed": 30},
            {"steps": 3000, "lr": 1e-3, "warmup": 100, "seed": 77},
            {"steps": 6000, "lr": 1e-3, "warmup": 100, "seed": 79},
            {"steps": 1000, "lr": 1e-3, "warmup": 100, "seed": 81, "duplicate_noise": 0.4},
        ],
    },
    "sampling": P.DEFAULT_SAMPLING,
    "eval_prompts": 219,
}
STAGES = ("vae", "checker", "artifact", "aesthetic", "flow")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "assets" / "testbed"))
    ap.add_argument("--reuse", default="", help="comma list of stages to load from --out")
    ap.add_argument("--smoke", action="store_true", help="a few steps per stage (wiring check)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--set", nargs="*", default=[], help="JSON overrides like vae.steps=500 or flow.cycles=[...]")
    ap.add_argument("--ckpt-every", type=int, default=0, help="save EMA flow checkpoints (development)")
    return ap.parse_args(argv)


def build_config(overrides: list[str], smoke: bool) -> dict[str, Any]:
    """A copy of ``CONFIG`` with the ``--set`` overrides (and the ``--smoke`` step counts) applied."""
    cfg = json.loads(json.dumps(CONFIG))
    for item in overrides:
        key, val = item.split("=", 1)
        *path, last = key.split(".")
        node = cfg
        for k in path:
            node = node[k]
        node[last] = json.loads(val)
    if smoke:
        for st in ("vae", "checker", "artifact", "aesthetic"):
            cfg[st]["steps"] = 3
        for cycle in cfg["flow"]["cycles"]:
            cycle["steps"] = 3
        cfg["eval_prompts"] = 8
    return cfg


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg = build_config(args.set, args.smoke)
    reuse = {s for s in args.reuse.split(",") if s}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / "train_testbed.log" if args.smoke else out / "train_log.txt"
    with open(log_path, "a") as log_file:
        t_start = time.time()

        def log(msg: str) -> None:
            line = f"[{time.time() - t_start:7.1f}s] {msg}"
            print(line, flush=True)
            log_file.write(line + "\n")
            log_file.flush()

        run(cfg, args, out, reuse, log)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        log(f"wrote {out} ({size:.1f} MB); total wall time {(time.time() - t_start) / 60:.1f} min")


def run(cfg: dict[str, Any], args: argparse.Namespace, out: Path, reuse: set[str], log: Callable[[str], None]) -> None:
    """Every stage in order: train (or reuse), write the prompt splits, evaluate, write config.json."""
    log(f"config {json.dumps(cfg)}")
    timings: dict[str, float] = {}
    components = P.build_components(cfg["arch"], cfg["seed"])
    vae = vae_stage(cfg, components, out, reuse, log, timings)
    scorer_models = scorer_stages(cfg, vae, out, reuse, log, timings)
    pipe = flow_stage(cfg, components, out, reuse, log, timings, args.ckpt_every)
    timings["train_total"] = sum(timings.values())
    log(
        f"training wall time {timings['train_total'] / 60:.1f} min: "
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items())
    )
    write_prompts(out)
    metrics = evaluate(pipe, scorer_models, cfg, args.smoke, out, log, timings)
    record = {
        "sampling": cfg["sampling"],
        "train_config": cfg,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "metrics": metrics,
        "torch": torch.__version__,
        "threads": args.threads,
    }
    (out / "config.json").write_text(json.dumps(record, indent=1) + "\n")


def vae_stage(cfg: dict, components: dict, out: Path, reuse: set[str], log: Callable, timings: dict) -> Any:
    """Train (or load) the VAE into ``components``; returns it frozen."""
    from flowalign.testbed import train as T

    t = time.time()
    if "vae" in reuse:
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(str(out / "pipeline" / "vae")).eval()
    else:
        components["vae"] = T.train_vae(cfg["vae"], components["vae"], cfg["seed"] + 10, log)
        components["vae"].save_pretrained(str(out / "pipeline" / "vae"), safe_serialization=True)
    vae = components["vae"].requires_grad_(False)
    timings["vae"] = time.time() - t
    return vae


def scorer_stages(cfg: dict, vae: Any, out: Path, reuse: set[str], log: Callable, timings: dict) -> dict[str, Any]:
    """Train (or load) the checker, artifact detector and aesthetic proxy."""
    from flowalign.testbed import train as T

    trainers = {"checker": T.train_checker, "artifact": T.train_detector, "aesthetic": T.train_aesthetic}
    scorer_models = {}
    for i, name in enumerate(trainers):
        t = time.time()
        if name in reuse:
            scorer_models[name] = S.load_scorer(name, out)
        else:
            scorer_models[name] = trainers[name](cfg[name], cfg["seed"] + 20 + i, log, vae=vae)
            S.save_scorer(scorer_models[name], out / "scorers")
        timings[name] = time.time() - t
    return scorer_models


def flow_stage(
    cfg: dict, components: dict, out: Path, reuse: set[str], log: Callable, timings: dict, ckpt_every: int
) -> Any:
    """Train (or load) the transformer and text encoders, cycle by cycle; returns the saved pipeline."""
    from flowalign.testbed.train_flow import train_flow

    t = time.time()
    if "flow" in reuse:
        pipe = P.load_pipeline(out / "pipeline")
    else:
        common = {k: v for k, v in cfg["flow"].items() if k != "cycles"}
        for i, cycle in enumerate(cfg["flow"]["cycles"]):

            def checkpoint(step: int, ema: dict, i: int = i) -> None:
                if ckpt_every and step % ckpt_every == 0:
                    P.assemble({**components, **ema}).save_pretrained(str(out / "checkpoints" / f"cycle{i}_step{step}"))

            log(f"flow cycle {i}: {json.dumps(cycle)}")
            components.update(train_flow({**common, **cycle}, components, cfg["seed"] + cycle["seed"], log, checkpoint))
        pipe = P.assemble(components)
        pipe.save_pretrained(str(out / "pipeline"), safe_serialization=True)
        pipe = P.load_pipeline(out / "pipeline")
    timings["flow"] = time.time() - t
    return pipe


def write_prompts(out: Path) -> None:
    (out / "prompts").mkdir(exist_ok=True)
    for split, table in W.prompt_splits().items():
        lines = [f"{kind}\t{p}" for kind in W.KINDS for p in table[kind]]
        (out / "prompts" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (out / "prompts" / "eval.txt").write_text("\n".join(W.eval_prompts()) + "\n")


def evaluate(pipe: Any, scorer_models: dict, cfg: dict, smoke: bool, out: Path, log: Callable, timings: dict) -> dict:
    """Metrics of the pipeline and the scorers (logged), and the sample grid."""
    from flowalign.testbed import evaluate as E

    t = time.time()
    metrics = E.evaluate_pipeline(
        pipe,
        scorer_models["checker"],
        W.eval_prompts(cfg["eval_prompts"]),
        **cfg["sampling"],
        seed=0,
        detector=scorer_models["artifact"],
        aesthetic=scorer_models["aesthetic"],
    )
    n_check = 1000 if not smoke else 32
    metrics["checker_heldout_acc"] = E.checker_agreement(scorer_models["checker"], n_check, seed=1)["acc"]
    metrics["artifact_detector_acc"] = E.detector_accuracy(scorer_models["artifact"], n_check, seed=2)["acc"]
    timings["eval"] = time.time() - t
    log("eval " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    E.sample_grid(
        pipe,
        W.eval_prompts(8) if not smoke else W.eval_prompts(2),
        seeds=4,
        path=out / "sample_grid.png",
        **cfg["sampling"],
    )
    return metrics


if __name__ == "__main__":
    main()
