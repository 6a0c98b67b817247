"""Drawing a gallery: prompts x seeds x methods -> images, multi-reward tables, an HTML page, plots.

A method (``specs.MethodSpec``) is ``base`` (the pipeline's ODE sampler, through the one rollout loop),
``lora:<checkpoint>`` (the same with trained weights loaded: a LoRA folder, a checkpoint folder, a run
folder or ``<run>/checkpoints/last``), or a steering method of ``flowalign.steering`` (fk, bon, beam,
svdd, dts, dts_star) with the options of ``flowalign steer`` (particles, lambda, potential,
resample_steps, nfe_budget, step, noise_level, noise_steps, reward_grad_scale, ... see
``flowalign.steering.config``). Every kind takes ``label=``, ``steps=``, ``cfg=`` and
``negative_prompt=`` (SD3 only); steering also ``reward=`` (default: the first reward) and ``lora=``
(steer the fine-tuned model). A method that cannot run here (an SD3-only option on Flux, a gradient
proposal with a non-differentiable reward, a missing optional dependency) is reported as
unavailable, never replaced by something else.

Each image is drawn alone with ``torch.Generator().manual_seed(seed)``, so it depends only on
(prompt, seed, method): base and LoRA share the initial noise, and an interrupted run gives the
same images. Rewards score the saved 8-bit PNG (re-scoring the file gives the same number).
Output folder: ``settings.json`` (the fingerprint), ``images/p<i>_s<seed>_<method>.png``,
``results.jsonl`` (one row per image, appended after its PNG is in place), ``results.csv``,
``summary.md`` / ``summary.json``, ``index.html`` and ``plots/``. A re-run skips images already
recorded; a folder holding another run's settings is refused before anything is written.
Video models (wan, ``num_frames`` > 1) write each clip as ``videos/<key>.mp4`` (``media.py``; the page
plays it) and image rewards score its 8-bit frames (``rewards.video.FrameReward``). Editing models
(qwenimage_edit, flux_kontext) take each prompt's source image from the prompts file's ``image`` column
(resized to ``size``); the rewards get it as ``source_images``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..steering.config import load_model_with_defaults
from .config import GalleryConfig, GallerySettings, check_out, settings_from_config
from .draw import generate, score
from .html import append_row, read_results, save_png, write_atomic, write_reports
from .media import VIDEO_SUFFIX, is_video, save_video
from .specs import SD3_ONLY, Checkpoint, MethodSpec, load_errors


# --- running one method -------------------------------------------------------------------------------
def unavailable_reason(spec: MethodSpec, model: Any, steer_reward: Any) -> str | None:
    """Why this method cannot run with this model / steering reward (None: it can)."""
    from ..models import FluxModel

    for key, why in SD3_ONLY.items():
        if key in spec.options and isinstance(model, FluxModel):
            return f"{key}= is an SD3 option: {why}"
    grad = spec.method is not None and (getattr(spec.method.options, "reward_grad_scale", None) or 0) > 0
    if grad and getattr(steer_reward, "differentiable", None) is False:
        return (
            f"the gradient proposal (reward_grad_scale>0) needs a differentiable reward; "
            f"{getattr(steer_reward, 'name', 'this reward')!r} is not"
        )
    return None


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """diffusers / transformers loading bars and notices (e.g. 'no LoRA keys for the text encoder') off."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(m, m.get_verbosity(), m.is_progress_bar_enabled()) for m in (dlog, tlog)]
    for m, _, _ in saved:
        m.set_verbosity_error()
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, level, bars in saved:
            m.set_verbosity(level)
            if bars:
                m.enable_progress_bar()


@contextlib.contextmanager
def weights(model: Any, ckpt: Checkpoint | None) -> Iterator[None]:
    """Inside: the model with the checkpoint's LoRA (``pipe.load_lora_weights``) or fine-tuned
    transformer; on exit the base weights are back (LoRA unloaded, transformer swapped back)."""
    if ckpt is None:
        yield
    elif ckpt.kind == "lora":
        with quiet_hf(), load_errors(ckpt):
            model.pipe.load_lora_weights(ckpt.path, adapter_name="gallery")
        try:
            yield
        finally:
            model.pipe.unload_lora_weights()
    else:
        base = model.transformer
        with load_errors(ckpt):
            tuned = type(base).from_pretrained(ckpt.path, torch_dtype=model.dtype).to(model.device).eval()
        model.transformer = model.pipe.transformer = tuned
        try:
            yield
        finally:
            model.transformer = model.pipe.transformer = base


def _load_reward(name: str) -> Any:
    if ":" in name:
        from ..train.build import import_factory

        return import_factory(name)()
    from ..rewards import load_reward

    return load_reward(name)


# --- a whole gallery ------------------------------------------------------------------------------------
@dataclass
class GalleryResult:
    out: Path
    rows: list[dict[str, Any]]  # one per image made, in (prompt, seed, method) order
    summary: dict[str, Any]  # method -> {n, rewards: {name: [mean, std]}, nfe, seconds}
    unavailable: dict[str, str]  # method label -> reason
    generated: int  # images made by this call (the rest were found on disk)
    table: str  # the summary table as printed
    seconds: float = 0.0  # wall time of this call


@dataclass
class _Run:  # what drawing one image needs
    settings: GallerySettings
    out: Path
    model: Any
    scorers: dict[str, Any]
    resolved: dict[str, Any]  # steps, cfg, size, max_sequence_length as used
    done: dict[str, dict[str, Any]]  # key -> row of results.jsonl

    def steer_reward(self, m: MethodSpec) -> Any:
        from ..train.build import lift_to_video

        reward = self.scorers[m.options.get("reward", self.settings.steer_reward)]
        return lift_to_video(reward) if getattr(self.model, "num_frames", 1) > 1 else reward

    def source(self, i: int) -> Any:
        """The source image [3, size, size] of prompt i for an editing model; None for other models."""
        from ..train.data import PromptSet, check_sources, source_images
        from ..train.families import EDIT_FAMILIES, loaded_family

        family = loaded_family(self.model)
        if family not in EDIT_FAMILIES:
            return None
        rows = PromptSet(self.settings.prompts, self.settings.metadata)
        check_sources(rows, family, "the prompts")
        return source_images(rows, [i], self.resolved["size"])[0]


def _load(settings: GallerySettings, out: Path) -> _Run:
    """The model (with its default steps, guidance, size) and every scorer."""
    max_seq = settings.max_sequence_length
    if max_seq is None and settings.model == "testbed":
        from ..train.presets import get_preset

        max_seq = get_preset("testbed").model.max_sequence_length
    with quiet_hf():
        model, default_steps, default_cfg = load_model_with_defaults(settings.model, max_seq, settings.num_frames)
    if hasattr(model, "pipe") and hasattr(model.pipe, "set_progress_bar_config"):
        model.pipe.set_progress_bar_config(disable=True)
    cfg = next(c for c in (settings.cfg, default_cfg, getattr(model, "default_guidance", None)) if c is not None)
    resolved = {
        "steps": settings.steps or default_steps,
        "cfg": cfg,
        "size": settings.size or int(model.default_size),
        "max_sequence_length": max_seq,
    }
    names = {*settings.rewards, settings.steer_reward, *(m.options.get("reward") for m in settings.methods)} - {None}
    scorers = {n: _load_reward(n) for n in sorted(names)}
    done = {k: r for k, r in read_results(out / "results.jsonl").items() if (out / r["image"]).is_file()}
    run = _Run(settings, out, model, scorers, resolved, done)
    if settings.prompts:
        run.source(0)  # an editing model without source images: one clear error before drawing
    return run


def _draw(run: _Run, m: MethodSpec, i: int, seed: int) -> dict[str, Any]:
    """One image of (prompt i, seed, method): drawn, saved, scored and appended to results.jsonl."""
    t0, key, prompt = time.perf_counter(), _key(i, seed, m), run.settings.prompts[i]
    r, source = run.resolved, run.source(i)
    image, fields = generate(run.model, m, prompt, seed, run.steer_reward(m), r["steps"], r["cfg"], r["size"], source)
    if is_video(image):  # a clip: an MP4 under videos/ (the rewards score its 8-bit frames)
        (run.out / "videos").mkdir(exist_ok=True)
        name = f"videos/{key}{VIDEO_SUFFIX}"
        pixels = save_video(image, run.out / name)
    else:
        name = f"images/{key}.png"
        pixels = save_png(image, run.out / name)
    row = {
        "key": key,
        "prompt_index": i,
        "prompt": prompt,
        "seed": seed,
        "method": m.label,
        "image": name,
        "rewards": score(run.scorers, run.settings, i, pixels, source),
        **fields,
        "seconds": round(time.perf_counter() - t0, 4),
    }
    append_row(run.out / "results.jsonl", row)
    run.done[key] = row
    return row


def run_gallery(
    settings: GallerySettings,
    out: str | Path,
    *,
    plots: bool = True,
    progress: bool = True,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> GalleryResult:
    """Make every missing image of ``settings`` in ``out``, then the tables, HTML and plots.
    ``on_image(row)`` is called after each new image is recorded (progress hooks, tests)."""
    from tqdm.auto import tqdm

    t0, out = time.perf_counter(), Path(out)
    fp = settings.fingerprint()
    resuming = check_out(out, fp)
    run = _load(settings, out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if not resuming:
        write_atomic(out / "settings.json", json.dumps(fp, indent=1).encode())
    unavailable = {
        m.label: why for m in settings.methods if (why := unavailable_reason(m, run.model, run.steer_reward(m)))
    }
    plan = [(m, i, s) for m in settings.methods if m.label not in unavailable for i, s in _grid(settings)]
    todo = [(m, i, s) for m, i, s in plan if _key(i, s, m) not in run.done]
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), disable=not progress, unit="img", desc="gallery")
    try:
        for m in settings.methods:
            mine = [(i, s) for mm, i, s in todo if mm is m]
            if not mine:
                continue
            bar.set_description(m.label)
            try:
                with weights(run.model, settings.checkpoints.get(m.label)):
                    for i, seed in mine:
                        row = _draw(run, m, i, seed)
                        bar.update(1)
                        if on_image is not None:
                            on_image(row)
            except ImportError as err:  # an optional dependency of this method is missing
                unavailable[m.label] = f"missing optional dependency: {err}"
    finally:
        bar.close()
    made = sum(_key(i, s, m) in run.done for m, i, s in todo)
    keys = [_key(i, s, m) for i, s in _grid(settings) for m in settings.methods]
    rows = [run.done[k] for k in keys if k in run.done]
    summary, table = write_reports(out, fp, run.resolved, settings, rows, unavailable, plots=plots)
    return GalleryResult(out, rows, summary, unavailable, made, table, time.perf_counter() - t0)


def gallery_job(cfg: GalleryConfig, progress: bool = True) -> GalleryResult:
    """``flowalign gallery``: validate ``cfg`` (nothing is written before), then ``run_gallery``."""
    return run_gallery(settings_from_config(cfg), cfg.out, plots=cfg.plots, progress=progress)


def _grid(settings: GallerySettings) -> list[tuple[int, int]]:
    return [(i, s) for i in range(len(settings.prompts)) for s in settings.seeds]


def _key(prompt_index: int, seed: int, method: MethodSpec) -> str:
    return f"p{prompt_index:03d}_s{seed}_{method.slug}"
