"""Run a steering job (``flowalign steer``): load the model and reward, steer, write the images and a report.

``run_steer(cfg)`` writes ``<out>/<i>_<method>.png`` (the chosen image of prompt i; ``.mp4`` for a
video model) and
``<out>/steer.json`` with the method, its keyword arguments, the reward of each chosen image, the NFE
spent (per prompt and in total), reward calls, wall time and the config. Every input is checked
before anything is loaded or written (``check``, ``config.validate``). An editing model (qwenimage_edit,
flux_kontext) takes each prompt's source image from the prompts file's ``image`` column, resized to
``size``; the reward gets it as ``source_images``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..overrides import to_dict
from .config import SteerConfig, load_model_with_defaults, method_kwargs, validate


def check(cfg: SteerConfig) -> list[str]:
    """Every check that needs no model (``config.validate``: values, names, files, the output folder)
    -> the prompts."""
    prompts = validate(cfg)
    method_kwargs(cfg.method)
    return prompts


def run_steer(cfg: SteerConfig) -> dict[str, Any]:
    """Steer ``cfg``'s prompts, write the images (videos: MP4) and steer.json into ``cfg.out``; returns the report."""
    import torch

    from . import steer

    prompts = check(cfg)
    model, default_steps, default_cfg = load_model_with_defaults(cfg.model, cfg.max_sequence_length, cfg.num_frames)
    steps = cfg.steps or default_steps
    guidance = cfg.cfg if cfg.cfg is not None else default_cfg
    kwargs = method_kwargs(cfg.method, steps)
    size = cfg.size or getattr(model, "default_size", None)
    reward, cond = job_reward(cfg, model, prompts, size, guidance)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    res = steer(
        cfg.method.kind,
        model,
        prompts,
        reward,
        num_steps=steps,
        cfg=guidance,
        height=size,
        width=size,
        generator=gen,
        cond=cond,
        **kwargs,
    )
    seconds = time.perf_counter() - t0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        images = model.decode(res.latents, size, size).clamp(0, 1)
    files = [_save(img, out / f"{i:03d}_{res.method}") for i, img in enumerate(images)]
    report = {
        "method": res.method,
        "model": cfg.model,
        "reward": cfg.reward,
        "seed": cfg.seed,
        "steps": steps,
        "cfg": guidance,
        "kwargs": kwargs,
        "prompts": prompts,
        "images": files,
        "rewards": [float(r) for r in res.rewards],
        "mean_reward": float(res.rewards.mean()),
        "nfe": int(res.nfe),
        "nfe_per_prompt": res.nfe / len(prompts),
        "reward_calls": int(res.reward_calls),
        "seconds": round(seconds, 3),
        "config": to_dict(cfg),
    }
    (out / "steer.json").write_text(json.dumps(report, indent=2))
    return report


def job_reward(cfg: SteerConfig, model: Any, prompts: list[str], size: int, guidance: Any) -> tuple[Any, Any]:
    """(the reward, the Cond to steer or None): image rewards lifted to clips for a video model; an
    editing model's prompts encoded with their source images (the prompts file's ``image`` column),
    which the reward then gets as ``source_images``."""
    from ..rewards import load_reward
    from ..train.build import lift_to_video
    from ..train.families import EDIT_FAMILIES, loaded_family
    from .common import WithSources, encode_prompts

    reward = load_reward(cfg.reward, path=cfg.reward_path)
    if getattr(model, "num_frames", 1) > 1:
        reward = lift_to_video(reward)
    family = loaded_family(model)
    if family not in EDIT_FAMILIES:
        return reward, None
    sources = prompt_sources(cfg, prompts, family, size)
    return WithSources(reward, prompts, sources), encode_prompts(model, prompts, guidance, images=sources)


def prompt_sources(cfg: SteerConfig, prompts: list[str], family: str, size: int) -> Any:
    """The source images [P, 3, size, size] of the prompts (from ``prompts_file``'s ``image`` column)."""
    from ..train.data import PromptSet, check_sources, load_prompts, source_images

    loaded = load_prompts(cfg.prompts_file) if cfg.prompts_file else PromptSet([], [])
    rows = PromptSet(prompts, [{} for _ in cfg.prompts] + list(loaded.metadata), loaded.root)
    check_sources(rows, family, "the prompts")
    return source_images(rows, list(range(len(prompts))), size)


def _save(image: Any, stem: Path) -> str:
    """An image [3, H, W] -> ``<stem>.png``; a clip [F, 3, H, W] -> ``<stem>.mp4``."""
    from PIL import Image

    from ..gallery.media import VIDEO_SUFFIX, is_video, save_video

    if is_video(image):
        path = stem.with_name(stem.name + VIDEO_SUFFIX)
        save_video(image, path)
        return path.name
    path = stem.with_name(stem.name + ".png")
    arr = (image.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    Image.fromarray(arr).save(path)
    return path.name
