"""Measuring the testbed: the base pipeline on held-out prompts (GenEval-style), the checker on
real procedural images, the artifact detector on clean vs. corrupted images, and a sample grid.

Sampling uses the stock ``StableDiffusion3Pipeline.__call__`` with one ``torch.Generator`` per
image (seed ``seed + i`` for the i-th prompt), so results do not depend on the batch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import corrupt as C
from . import render as R
from . import world as W

CLAUSE_TYPES = ("color", "shape", "count", "position")


@torch.no_grad()
def generate(
    pipe,
    prompts: list[str],
    num_inference_steps: int,
    guidance_scale: float,
    seed: int = 0,
    batch_size: int = 32,
    **kwargs: Any,
) -> Tensor:
    """Images [N, 3, 32, 32] in [0, 1] from the stock pipeline call."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        res = pipe(
            prompt=chunk,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=gens,
            output_type="pt",
            **kwargs,
        )
        out.append(res.images.float().cpu())
    return torch.cat(out)


def clause_metrics(correct: Tensor, mask: Tensor, labels: list[W.PromptLabels]) -> dict[str, float]:
    """Per-clause-type accuracies, all-clauses accuracy overall and per prompt kind."""
    types = [[t for t, _ in lab.clauses()] for lab in labels]
    out: dict[str, float] = {}
    for t in CLAUSE_TYPES:
        vals = [bool(correct[i, j]) for i, ts in enumerate(types) for j, tt in enumerate(ts) if tt == t]
        out[f"{t}_acc"] = float(np.mean(vals)) if vals else float("nan")
    allc = (correct | ~mask).all(1)
    out["compositional_acc"] = float(allc.float().mean())
    for kind in W.KINDS:
        sel = [i for i, lab in enumerate(labels) if lab.kind == kind]
        if sel:
            out[f"kind_{kind}_acc"] = float(allc[sel].float().mean())  # all clauses, this kind
    return out


def evaluate_pipeline(
    pipe,
    checker,
    prompts: list[str],
    num_inference_steps: int,
    guidance_scale: float,
    seed: int = 0,
    batch_size: int = 32,
    detector=None,
    aesthetic=None,
    return_images: bool = False,
) -> dict[str, Any]:
    """Generate one image per prompt and judge it with the checker (plus optional scorers)."""
    labels = [W.parse_prompt(p) for p in prompts]
    images = generate(pipe, prompts, num_inference_steps, guidance_scale, seed, batch_size)
    with torch.no_grad():
        res = checker(images, labels)
    out: dict[str, Any] = clause_metrics(res.correct, res.mask, labels)
    out["n_prompts"] = len(prompts)
    out["clause_fraction"] = float(res.fraction.mean())
    with torch.no_grad():
        if detector is not None:
            out["generated_artifact_prob"] = float(detector(images).mean())
        if aesthetic is not None:
            out["generated_aesthetic"] = float(aesthetic(images).mean())
    if return_images:
        out["images"] = images
    return out


def agreement_batch(n: int, seed: int) -> tuple[Tensor, list[W.PromptLabels], Tensor, Tensor]:
    """Fresh real images with held-out prompts: half rendered FOR the prompt (all clauses true),
    half rendered for another prompt or a random scene. Returns images, labels, true verdicts, mask."""
    rng = np.random.default_rng(10_000 + seed)
    scenes, labels = [], []
    for i in range(n):
        lab = W.parse_prompt(W.sample_prompt(rng, "test", weights=(0.0, 0.2, 0.3, 0.5)))
        if i % 2 == 0:
            scenes.append(W.scene_for(lab, rng))
        elif i % 4 == 1:
            scenes.append(W.scene_for(W.parse_prompt(W.sample_prompt(rng, "test")), rng))
        else:
            scenes.append(W.random_scene(rng))
        labels.append(lab)
    counts, cent = W.scene_table(scenes)
    truth, mask = W.judge(counts, cent, labels)
    return R.render(scenes), labels, truth, mask


@torch.no_grad()
def checker_agreement(checker, n: int = 1000, seed: int = 0, batch_size: int = 250) -> dict[str, float]:
    """Fraction of (image, prompt) pairs where the checker's verdict on EVERY clause is right."""
    agree, matched = [], []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        x, labels, truth, mask = agreement_batch(m, seed * 1_000_003 + start)
        res = checker(x, labels)
        agree.append(((res.correct == truth) | ~mask).all(1))
        matched.append(res.all_correct[0::2])
    agree_t = torch.cat(agree)
    return {
        "acc": float(agree_t.float().mean()),
        "matched_all_correct": float(torch.cat(matched).float().mean()),
        "n": n,
    }


@torch.no_grad()
def detector_accuracy(detector, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Accuracy on fresh procedural images: half clean (mild blur/noise), half corrupted."""
    rng, g = np.random.default_rng(20_000 + seed), torch.Generator().manual_seed(20_000 + seed)
    scenes = [
        W.random_scene(rng) if rng.random() < 0.5 else W.scene_for(W.parse_prompt(W.sample_prompt(rng, "test")), rng)
        for _ in range(n)
    ]
    x = C.mild(R.render(scenes), g)
    y = torch.arange(n) % 2 == 1
    kinds = torch.arange(n) // 2 % len(C.CORRUPTIONS)
    x[y], _ = C.corrupt(x[y], g, kinds[y])
    pred = detector(x) > 0.5
    out = {"acc": float((pred == y).float().mean()), "clean_acc": float((~pred[~y]).float().mean())}
    for k, name in enumerate(C.CORRUPTIONS):
        sel = y & (kinds == k)
        out[f"{name}_acc"] = float(pred[sel].float().mean())
    return out


def sample_grid(
    pipe,
    prompts: list[str],
    seeds: int,
    path: str | Path,
    num_inference_steps: int,
    guidance_scale: float,
    scale: int = 3,
) -> Path:
    """A PNG: one row per prompt (caption on the left), ``seeds`` samples per row."""
    from PIL import Image, ImageDraw

    imgs = generate(pipe, [p for p in prompts for _ in range(seeds)], num_inference_steps, guidance_scale)
    cell, label_w = W.IMAGE_SIZE * scale, 260
    canvas = Image.new("RGB", (label_w + seeds * (cell + 2), len(prompts) * (cell + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, prompt in enumerate(prompts):
        draw.text((4, r * (cell + 2) + cell // 2 - 6), prompt, fill=(0, 0, 0))
        for c in range(seeds):
            arr = (imgs[r * seeds + c].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(arr).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (cell + 2), r * (cell + 2)))
    path = Path(path)
    canvas.save(path)
    return path


def assets_mb(directory: str | Path | None = None) -> float:
    from .paths import assets_dir

    root = assets_dir(directory)
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20


def run_eval(
    n_prompts: int | None = None,
    seed: int = 0,
    assets: str | Path | None = None,
    pipeline: str | Path | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    n_real: int = 1000,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Everything ``flowalign testbed eval`` and ``benchmarks/bench_testbed.py`` report."""
    from .pipeline import default_sampling, load_pipeline
    from .scorers import load_aesthetic, load_artifact_detector, load_checker

    sampling = default_sampling(assets)
    steps = int(steps or sampling["num_inference_steps"])
    guidance = float(sampling["guidance_scale"] if guidance is None else guidance)
    pipe = load_pipeline(
        pipeline if pipeline is not None else (Path(assets) / "pipeline" if assets is not None else None)
    )
    checker, detector = load_checker(assets), load_artifact_detector(assets)
    prompts = eval_prompts_n(n_prompts)
    out = evaluate_pipeline(
        pipe, checker, prompts, steps, guidance, seed, batch_size, detector=detector, aesthetic=load_aesthetic(assets)
    )
    out.update(num_inference_steps=steps, guidance_scale=guidance)
    agree = checker_agreement(checker, n_real, seed=seed + 1)
    det = detector_accuracy(detector, n_real, seed=seed + 2)
    out["checker_heldout_acc"] = agree["acc"]
    out["checker_matched_all_correct"] = agree["matched_all_correct"]
    out["artifact_detector_acc"] = det["acc"]
    out.update({f"detector_{k}": v for k, v in det.items() if k != "acc"})
    out["assets_mb"] = round(assets_mb(assets), 2)
    return out


def eval_prompts_n(n: int | None) -> list[str]:
    """The first ``n`` held-out prompts (all 219 when None); more than that repeats them."""
    base = W.eval_prompts()
    n = len(base) if n is None else int(n)
    if n < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n}")
    return [base[i % len(base)] for i in range(n)]


MAIN_KEYS = (
    "color_acc",
    "shape_acc",
    "count_acc",
    "position_acc",
    "compositional_acc",
    "checker_heldout_acc",
    "artifact_detector_acc",
    "assets_mb",
)


def format_table(metrics: dict[str, Any]) -> str:
    rows = [(k, metrics[k]) for k in metrics if k != "images"]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in rows)
