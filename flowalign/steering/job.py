"""Run a steering job (``flowalign steer``): load the model and reward, steer, write the images and a report.

``run_steer(cfg)`` writes ``<out>/<i>_<method>.png`` (the chosen image of prompt i) and
``<out>/steer.json`` with the method, its keyword arguments, the reward of each chosen image, the NFE
spent (per prompt and in total), reward calls, wall time and the config. Every input is checked
before anything is loaded or written (``check``, ``config.validate``).
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
    """Steer ``cfg``'s prompts, write the images and steer.json into ``cfg.out``; returns the report."""
    import torch

    from ..rewards import load_reward
    from . import steer

    prompts = check(cfg)
    model, default_steps, default_cfg = load_model_with_defaults(cfg.model, cfg.max_sequence_length)
    reward = load_reward(cfg.reward, path=cfg.reward_path)
    steps = cfg.steps or default_steps
    guidance = cfg.cfg if cfg.cfg is not None else default_cfg
    kwargs = method_kwargs(cfg.method, steps)
    size = cfg.size or getattr(model, "default_size", None)
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
        **kwargs,
    )
    seconds = time.perf_counter() - t0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        images = model.decode(res.latents, size, size).clamp(0, 1)
    files = [_save(img, out / f"{i:03d}_{res.method}.png") for i, img in enumerate(images)]
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


def _save(image: Any, path: Path) -> str:
    from PIL import Image

    arr = (image.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    Image.fromarray(arr).save(path)
    return path.name
