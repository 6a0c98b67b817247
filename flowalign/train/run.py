"""A training run from a config: resolve (preset + overrides, or a resumed run's saved config),
validate, build (model, reward, prompts) and train. ``flowalign train`` is a thin layer over this."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import overrides
from .batching import derived
from .build import build_eval_metrics, build_model, build_process_reward, build_prompts, build_reward, default_run_dir
from .checks import check_paths, validate
from .config import RENAMED, Config
from .presets import PRESETS


def resolve_config(preset: str | None, items: list[str], resume: str | None) -> tuple[Config, Path | None]:
    """Preset (or the resumed run's saved config) + overrides, and the checkpoint to resume from."""
    from .resume import resolve_resume

    if preset is not None and "=" in preset:  # `flowalign train sample.num_steps=8`
        preset, items = None, [preset, *items]
    cfg = overrides.resolve(PRESETS, [preset or "testbed", *items], "testbed", RENAMED)
    path = None
    if resume is not None:
        path = resolve_resume(resume, cfg.train.output_dir, cfg.train.runs_dir, cfg.preset)
        saved = json.loads((path / "state.json").read_text())["scalars"]["config"]
        cfg = overrides.apply_overrides(overrides.from_dict(saved, Config), items, RENAMED)
        cfg.train.output_dir = str(path.parent.parent)
    return cfg, path


def main(
    cfg: Config,
    *,
    resume: str | Path | None = None,
    reward_fn: Callable | None = None,
    prompts=None,
    eval_prompts=None,
    **train_kwargs: Any,
):
    """Validate, build and train. ``reward_fn`` / ``prompts`` replace the configured ones (tests)."""
    import torch
    from accelerate.utils import broadcast_object_list

    from .distributed import finish, make_accelerator
    from .loop import train

    check_paths(cfg)  # before accelerate reads the precision or anything is created
    acc = make_accelerator(cfg)
    try:
        if reward_fn is None:
            validate(cfg, acc.num_processes)
        else:
            derived(cfg, acc.num_processes)
        if prompts is None:
            prompts, eval_prompts = build_prompts(cfg)
        torch.manual_seed(cfg.train.seed)
        model, export_fn, ref_model = build_model(cfg, acc.device)
        if reward_fn is None:
            reward_fn = build_reward(cfg, acc.device)
            train_kwargs.setdefault("eval_metrics", build_eval_metrics(cfg, acc.device))
        if getattr(cfg.credit.options, "process_reward", ""):
            train_kwargs.setdefault("process_reward", build_process_reward(cfg, acc.device))
        run_dir = str(default_run_dir(cfg))
        run_dir = broadcast_object_list([run_dir])[0] if acc.num_processes > 1 else run_dir
        return train(
            cfg,
            model,
            reward_fn,
            prompts,
            eval_prompts=eval_prompts,
            run_dir=run_dir,
            resume=resume,
            accelerator=acc,
            export_fn=export_fn,
            ref_model=ref_model,
            **train_kwargs,
        )
    finally:
        finish(acc)
