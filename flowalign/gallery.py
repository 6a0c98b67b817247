"""``flowalign gallery``: prompts x seeds x methods -> images, multi-reward tables, an HTML gallery, plots.

    flowalign gallery --method base --method lora:runs/x/checkpoints/last \
        --method fk:particles=4,potential=max,lambda=10 --seeds 0,1,2 --out runs/gallery

A method is a spec ``KIND[:key=value,...]`` parsed into a ``MethodSpec``: ``base`` (the pipeline's
ODE sampler, through the one rollout loop), ``lora:<checkpoint>`` (the same with trained weights
loaded: a LoRA folder, a checkpoint folder, a run folder or ``<run>/checkpoints/last``), or a
steering method of ``flowalign.steering`` (fk, bon, beam, svdd, dts, dts_star) with the options of
``flowalign steer`` (particles, lambda, potential, resample_steps, nfe_budget, step, noise_level, noise_steps, or
any other keyword of the method), built by that command's own ``build_kwargs``. Every kind takes
``label=``, ``steps=``, ``cfg=`` and ``negative_prompt=`` (SD3 only); steering also ``reward=``
(default: the first reward) and ``lora=`` (steer the fine-tuned model). A method that cannot run
here (an SD3-only option on Flux, a gradient proposal with a non-differentiable reward, a missing
optional dependency) is reported as unavailable, never replaced by something else.

Each image is drawn alone with ``torch.Generator().manual_seed(seed)``, so it depends only on
(prompt, seed, method): base and LoRA share the initial noise, and an interrupted run gives the
same images. Rewards score the saved 8-bit PNG (re-scoring the file gives the same number).
Output folder: ``settings.json`` (the fingerprint), ``images/p<i>_s<seed>_<method>.png``,
``results.jsonl`` (one row per image, appended after its PNG is in place), ``results.csv``,
``summary.md`` / ``summary.json``, ``index.html`` and ``plots/``. A re-run skips images already
recorded; a folder holding another run's settings is refused before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .gallery_html import append_row, read_results, save_png, write_atomic, write_reports
from .gallery_specs import (
    SD3_ONLY,
    Checkpoint,
    GallerySettings,
    MethodSpec,
    check_out,
    make_settings,  # noqa: F401
    steering_kwargs,
)


# --- running one method -------------------------------------------------------------------------------
def unavailable_reason(spec: MethodSpec, model: Any, steer_reward: Any) -> str | None:
    """Why this method cannot run with this model / steering reward (None: it can)."""
    from .models import FluxModel

    for key, why in SD3_ONLY.items():
        if key in spec.options and isinstance(model, FluxModel):
            return f"{key}= is an SD3 option: {why}"
    if (
        spec.steering
        and float(spec.options.get("guidance_scale", 0) or 0) > 0
        and getattr(steer_reward, "differentiable", None) is False
    ):
        return (
            f"the gradient proposal (guidance_scale>0) needs a differentiable reward; "
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
        with quiet_hf():
            model.pipe.load_lora_weights(ckpt.path, adapter_name="gallery")
        try:
            yield
        finally:
            model.pipe.unload_lora_weights()
    else:
        base = model.transformer
        tuned = type(base).from_pretrained(ckpt.path, torch_dtype=model.dtype).to(model.device).eval()
        model.transformer = model.pipe.transformer = tuned
        try:
            yield
        finally:
            model.transformer = model.pipe.transformer = base


def generate(
    model: Any, spec: MethodSpec, prompt: str, seed: int, reward: Any, steps: int, cfg: float | None, size: int
) -> tuple[Any, dict[str, Any]]:
    """One image [3, H, W] in [0, 1] for (prompt, seed) and its row fields (nfe, ...)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    steps, cfg = spec.options.get("steps", steps), spec.options.get("cfg", cfg)
    neg = spec.options.get("negative_prompt")
    nfe0, extra = model.nfe, {}
    if spec.steering:
        from .steering import steer

        kwargs, particles = steering_kwargs(spec)
        if kwargs.get("nfe_budget", 0) is None:  # DTS without a budget: what FK would spend (as `flowalign steer`)
            kwargs["nfe_budget"] = particles * steps
        if neg is not None:
            kwargs["negative_prompts"] = [neg]
        res = steer(
            spec.kind,
            model,
            [prompt],
            reward,
            num_steps=steps,
            cfg=cfg,
            height=size,
            width=size,
            generator=gen,
            **kwargs,
        )
        with torch.no_grad():
            image = model.decode(res.latents, size, size)[0]
        extra = {"reward_calls": int(res.reward_calls), "steer_reward": float(res.rewards[0])}
    else:
        image = model.sample(
            [prompt], num_steps=steps, guidance_scale=cfg, height=size, width=size, generator=gen, negative_prompts=neg
        ).images[0]
    return image, {"nfe": int(model.nfe - nfe0), **extra}


def score(scorers: dict[str, Any], settings: GallerySettings, i: int, pixels: Any) -> dict[str, float]:
    """Every reward of the saved pixels [3, H, W] of prompt i (with its .jsonl metadata columns)."""
    import torch

    columns = {k: [v] for k, v in settings.metadata[i].items()}
    with torch.no_grad():
        return {n: float(scorers[n](pixels[None], [settings.prompts[i]], **columns)[0]) for n in settings.rewards}


def _load_reward(name: str) -> Any:
    if ":" in name:
        from .train_cli import import_factory

        return import_factory(name)()
    from .rewards import load_reward

    return load_reward(name)


@dataclass
class GalleryResult:
    out: Path
    rows: list[dict[str, Any]]  # one per image made, in (prompt, seed, method) order
    summary: dict[str, Any]  # method -> {n, rewards: {name: [mean, std]}, nfe, seconds}
    unavailable: dict[str, str]  # method label -> reason
    generated: int  # images made by this call (the rest were found on disk)
    table: str  # the summary table as printed


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

    from .steer_cli import load_model_with_defaults

    out = Path(out)
    fp = settings.fingerprint()
    resuming = check_out(out, fp)
    max_seq = settings.max_sequence_length
    if max_seq is None and settings.model == "testbed":
        from .config import get_preset

        max_seq = get_preset("testbed").model.max_sequence_length
    with quiet_hf():
        model, default_steps, default_cfg = load_model_with_defaults(settings.model, max_seq)
    if hasattr(model, "pipe") and hasattr(model.pipe, "set_progress_bar_config"):
        model.pipe.set_progress_bar_config(disable=True)
    steps = settings.steps or default_steps
    cfg = next(c for c in (settings.cfg, default_cfg, getattr(model, "default_guidance", None)) if c is not None)
    size = settings.size or int(model.default_size)
    names = {*settings.rewards, settings.steer_reward, *(m.options.get("reward") for m in settings.methods)} - {None}
    scorers = {n: _load_reward(n) for n in sorted(names)}
    (out / "images").mkdir(parents=True, exist_ok=True)
    if not resuming:
        write_atomic(out / "settings.json", json.dumps(fp, indent=1).encode())
    results = out / "results.jsonl"
    done = {k: r for k, r in read_results(results).items() if (out / r["image"]).is_file()}
    plan = [(m, i, s) for m in settings.methods for i in range(len(settings.prompts)) for s in settings.seeds]
    unavailable = {
        m.label: why
        for m in settings.methods
        if (why := unavailable_reason(m, model, scorers[m.options.get("reward", settings.steer_reward)]))
    }
    plan = [(m, i, s) for m, i, s in plan if m.label not in unavailable]
    made = 0
    bar = tqdm(
        total=len(plan),
        initial=sum(_key(i, s, m) in done for m, i, s in plan),
        disable=not progress,
        unit="img",
        desc="gallery",
    )
    try:
        for m in settings.methods:
            todo = [(i, s) for mm, i, s in plan if mm is m and _key(i, s, m) not in done]
            steer_reward = scorers[m.options.get("reward", settings.steer_reward)]
            if not todo:
                continue
            bar.set_description(m.label)
            try:
                with weights(model, settings.checkpoints.get(m.label)):
                    for i, seed in todo:
                        t0, key, prompt = time.perf_counter(), _key(i, seed, m), settings.prompts[i]
                        image, fields = generate(model, m, prompt, seed, steer_reward, steps, cfg, size)
                        pixels = save_png(image, out / "images" / f"{key}.png")
                        row = {
                            "key": key,
                            "prompt_index": i,
                            "prompt": prompt,
                            "seed": seed,
                            "method": m.label,
                            "image": f"images/{key}.png",
                            "rewards": score(scorers, settings, i, pixels),
                            **fields,
                            "seconds": round(time.perf_counter() - t0, 4),
                        }
                        append_row(results, row)
                        done[key] = row
                        made += 1
                        bar.update(1)
                        if on_image is not None:
                            on_image(row)
            except ImportError as err:  # an optional dependency of this method is missing
                unavailable[m.label] = f"missing optional dependency: {err}"
    finally:
        bar.close()
    rows = [
        done[_key(i, s, m)]
        for i in range(len(settings.prompts))
        for s in settings.seeds
        for m in settings.methods
        if _key(i, s, m) in done
    ]
    resolved = {"steps": steps, "cfg": cfg, "size": size, "max_sequence_length": max_seq}
    summary, table = write_reports(out, fp, resolved, settings, rows, unavailable, plots=plots)
    return GalleryResult(out, rows, summary, unavailable, made, table)


def _key(prompt_index: int, seed: int, method: MethodSpec) -> str:
    return f"p{prompt_index:03d}_s{seed}_{method.slug}"


# --- command line ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="testbed",
        help="'testbed' (default), a registered name (tiny-sd3, tiny-flux), a saved pipeline folder or a hub id",
    )
    parser.add_argument(
        "--method",
        action="append",
        default=None,
        metavar="SPEC",
        help="repeatable: base | lora:CHECKPOINT | fk:particles=4,potential=max,lambda=10 | "
        "bon:particles=8 | beam | svdd | dts | dts_star (options: see flowalign steer); "
        "every kind takes label=, steps=, cfg=; default: base",
    )
    parser.add_argument(
        "--prompts-file",
        default=None,
        help="prompt file (.txt or .jsonl); default for the testbed: assets/prompts/gallery_testbed.txt",
    )
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    parser.add_argument("--num-prompts", type=int, default=None, help="use the first N prompts only")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one image per prompt and seed")
    parser.add_argument(
        "--reward",
        action="append",
        default=None,
        help="reward to score every image with (repeatable; a name in flowalign.rewards.REWARDS or "
        "'package.module:factory'); default for the testbed: compositional, testbed_aesthetic, "
        "testbed_artifact",
    )
    parser.add_argument(
        "--steer-reward", default=None, help="reward the steering methods use (default: the first --reward)"
    )
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--size", type=int, default=None, help="image height = width (default: the model's)")
    parser.add_argument(
        "--max-seq", type=int, default=None, help="T5 max_sequence_length (default: 16 for the testbed)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    parser.add_argument("--out", default="runs/gallery", help="output folder (re-run the same command to resume)")


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r} must be comma-separated ints, e.g. --seeds 0,1,2.") from None


def run(args: argparse.Namespace) -> int:
    from .cli import guarded

    def job() -> int:
        settings = make_settings(
            args.model,
            args.method or ["base"],
            prompts=args.prompt,
            prompts_file=args.prompts_file,
            num_prompts=args.num_prompts,
            seeds=_seeds(args.seeds),
            rewards=args.reward,
            steer_reward=args.steer_reward,
            steps=args.steps,
            cfg=args.cfg,
            size=args.size,
            max_sequence_length=args.max_seq,
        )
        t0 = time.perf_counter()
        res = run_gallery(settings, args.out, plots=not args.no_plots)
        print(res.table)
        print(
            f"{res.generated} new image(s), {len(res.rows)} in all, {time.perf_counter() - t0:.1f} s -> "
            f"{Path(args.out) / 'index.html'}"
        )
        return 0

    return guarded("gallery", job, f"interrupted; run the same command again to resume into {args.out}")
