"""``flowalign train [preset] [key=value ...] [--resume DIR|auto]``: config -> objects -> trainer.

Everything that can be wrong with the input is checked here, before the model is loaded where
possible, and reported as ONE ValueError naming the bad value and the fix: unknown preset or config
key, batch arithmetic that does not divide over the processes, unknown reward, missing model path,
missing/empty/unreadable prompt file, LoRA target modules absent from the transformer, SDE windows
that do not fit the step count, credit / exploration options (``credit.checks.check_credit_config``:
tree split schedules and branch factors, pruning, G^2RPO strides, ladders, psi(t) calibration) and a
non-differentiable process reward for Euphonium's guided SDE. Then the model is loaded, frozen, given LoRA adapters (peft) or
made fully trainable, and handed to ``flowalign.trainer.train``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Config, apply_overrides, derived, from_dict
from .presets import PRESETS, get_preset

DTYPES = ("fp32", "bf16", "fp16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "preset",
        nargs="?",
        default=None,
        help=f"one of {sorted(PRESETS)} (default: testbed, or the resumed run's config)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="dotted config overrides, e.g. sample.num_steps=8 optim.lr=1e-4 reward.weights.hpsv2=1",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="DIR|auto",
        help="continue from a checkpoint or run directory; 'auto' = the latest complete checkpoint",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def resolve_config(preset: str | None, overrides: list[str], resume: str | None) -> tuple[Config, Path | None]:
    """Preset (or the resumed run's saved config) + overrides, and the checkpoint to resume from."""
    from . import checkpoint as ckpt

    if preset is not None and "=" in preset:  # `flowalign train sample.num_steps=8`
        preset, overrides = None, [preset, *overrides]
    cfg = get_preset(preset or "testbed")
    apply_overrides(cfg, overrides)
    path = None
    if resume is not None:
        path = ckpt.resolve_resume(resume, cfg.train.output_dir, cfg.train.runs_dir, cfg.preset)
        saved = json.loads((path / "state.json").read_text())["scalars"]["config"]
        cfg = apply_overrides(from_dict(saved), overrides)
        cfg.train.output_dir = str(path.parent.parent)
    return cfg, path


def validate(cfg: Config, world_size: int = 1) -> None:
    """The start-up checks that need no model (see the module docstring)."""
    from .credit.checks import check_credit_config, check_guidance
    from .objectives import check_objective
    from .rewards import REWARDS
    from .sampling.sde import STEPS

    check_credit_config(cfg)
    check_objective(cfg)
    derived(cfg, world_size)
    unknown = [n for n in cfg.reward.weights if n not in REWARDS and ":" not in n]
    if unknown:
        raise ValueError(
            f"unknown reward(s) {unknown}; choose from {sorted(REWARDS)} or give your own as "
            f"'package.module:factory' (set them with reward.weights.<name>=<weight>)."
        )
    for name in cfg.reward.weights:
        if ":" in name:
            import_factory(name)
    if not cfg.reward.weights:
        raise ValueError("reward.weights is empty; set e.g. reward.weights.compositional=1.")
    for name, spec in cfg.eval.metrics.items():
        if not isinstance(spec, dict) or spec.get("reward") not in REWARDS:
            raise ValueError(f"eval.metrics.{name}={spec!r} must be a dict whose 'reward' is one of {sorted(REWARDS)}.")
    extra = [n for n in cfg.reward.options if n not in cfg.reward.weights]
    if extra:
        raise ValueError(f"reward.options has entries {extra} without a weight in reward.weights.")
    if cfg.sample.step not in STEPS:
        raise ValueError(f"sample.step={cfg.sample.step!r} is unknown; choose one of {sorted(STEPS)}.")
    if cfg.credit.process_reward and cfg.credit.process_reward not in REWARDS:
        raise ValueError(
            f"credit.process_reward={cfg.credit.process_reward!r} is unknown; choose one of {sorted(REWARDS)}."
        )
    if cfg.credit.name == "euphonium":  # the guided SDE takes grad R: refuse a non-differentiable one now
        check_guidance(build_process_reward(cfg) or build_reward(cfg), cfg.credit.guidance_kappa)
    if cfg.model.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.model.dtype!r}; choose one of {DTYPES}.")
    if cfg.train.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"train.mixed_precision={cfg.train.mixed_precision!r}; choose no, fp16 or bf16.")
    resolve_model_path(cfg.model.path)


def resolve_model_path(path: str) -> str:
    """'testbed' -> the shipped pipeline dir; a registered name or existing dir as is; 'owner/name'
    as a hub id; anything else is a missing path (one clear error)."""
    from .models import MODELS

    if path == "testbed":
        from .testbed.paths import pipeline_dir

        return str(pipeline_dir())
    if path in MODELS:
        return path
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, "model_index.json")):
            raise ValueError(
                f"model.path={path!r} holds no model_index.json; pass the directory written by "
                f"`pipeline.save_pretrained(dir)`."
            )
        return local
    parts = path.split("/")
    if len(parts) == 2 and all(parts) and not path.startswith((".", "~")):
        return path  # a hub id: loading needs the network or the local HF cache
    raise ValueError(
        f"model.path={path!r} does not exist; pass model.path=<a directory saved with "
        f"pipeline.save_pretrained>, 'testbed', one of {sorted(MODELS)}, or a hub id 'owner/name'."
    )


def check_lora_targets(transformer: Any, targets: list[str]) -> None:
    """Every target must name (as a suffix, as peft matches) at least one nn.Linear-like module."""
    names = [n for n, _ in transformer.named_modules() if n]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing or not targets:
        leaves = sorted(
            {
                ".".join(n.split(".")[-2:])
                for n, m in transformer.named_modules()
                if n
                and hasattr(m, "weight")
                and getattr(m, "weight", None) is not None
                and getattr(m.weight, "ndim", 0) == 2
            }
        )
        raise ValueError(
            f"LoRA target module(s) {missing or targets} are not in the {type(transformer).__name__}; "
            f"set model.lora_targets to names that exist, e.g. {leaves[:12]}."
        )


def build_model(cfg: Config, device: Any = "cpu") -> tuple[Any, Callable[[Path], None], Any]:
    """(FlowModel with trainable params set up, export_fn(dir), ref_model or None)."""
    import torch

    from .checkpoint import export_lora
    from .models import MODELS, load_model

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.model.dtype]
    path = resolve_model_path(cfg.model.path)
    kw: dict[str, Any] = {"max_sequence_length": cfg.model.max_sequence_length}
    if dtype != torch.float32 and path not in MODELS:  # (saved pipelines load in fp32 by default)
        kw["torch_dtype"] = dtype
    model = load_model(path, family=cfg.model.family, **kw)
    pipe = model.pipe
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.requires_grad_(False).eval()
    bare, ref_model = model.transformer, None
    if cfg.model.lora:
        from peft import LoraConfig

        check_lora_targets(bare, cfg.model.lora_targets)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            bare.add_adapter(
                LoraConfig(
                    r=cfg.model.lora_rank,
                    lora_alpha=cfg.model.lora_alpha,
                    init_lora_weights=cfg.model.lora_init,
                    target_modules=list(cfg.model.lora_targets),
                )
            )
        for p in bare.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        export_fn = lambda d: export_lora(type(pipe), bare, Path(d) / "lora")  # noqa: E731
    else:
        bare.float().requires_grad_(True)
        if cfg.loss.beta > 0:  # the base weights must survive training: a frozen copy
            ref_model = copy.copy(model)
            ref_model.transformer = copy.deepcopy(bare).requires_grad_(False)
        export_fn = lambda d: bare.save_pretrained(str(Path(d) / "transformer"))  # noqa: E731
    if cfg.model.gradient_checkpointing:
        bare.enable_gradient_checkpointing()
    model.to(device)
    if ref_model is not None:
        ref_model.transformer.to(device)
    return model, export_fn, ref_model


def import_factory(spec: str) -> Callable:
    """'package.module:factory' -> the factory (a user-supplied reward); one clear error otherwise."""
    import importlib

    module, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"reward {spec!r} cannot be imported ({err}); a user-supplied reward is "
            f"'package.module:factory' where factory(**reward.options[name]) returns a module "
            f"mapping (images [B,3,H,W] in [0,1], prompts, **metadata) -> Tensor[B]."
        ) from None
    if not callable(factory):
        raise ValueError(f"reward {spec!r} is not callable.")
    return factory


def build_reward(cfg: Config, device: Any = "cpu"):
    """MultiReward over the named rewards; 'module:factory' names are built by their own factory."""
    from .rewards import MultiReward

    options = {k: dict(v) for k, v in cfg.reward.options.items()}
    key = lambda n: n.replace(".", "_")  # noqa: E731  (module names cannot hold '.')
    custom = {key(n): import_factory(n)(**options.pop(n, {})) for n in cfg.reward.weights if ":" in n}
    weights = {key(n): w for n, w in cfg.reward.weights.items()}
    return MultiReward(weights, rewards=custom, **options).to(device)


def build_process_reward(cfg: Config, device: Any = "cpu"):
    """Euphonium's process reward ``credit.process_reward`` built with ``credit.process_options``, or
    None: the trainer then uses the training reward."""
    from .rewards import load_reward

    name = cfg.credit.process_reward
    return load_reward(name, **dict(cfg.credit.process_options)).to(device) if name else None


def build_eval_metrics(cfg: Config, device: Any = "cpu") -> dict[str, Any]:
    from .rewards import load_reward

    return (
        {
            name: load_reward(spec["reward"], **{k: v for k, v in spec.items() if k != "reward"}).to(device)
            for name, spec in cfg.eval.metrics.items()
        }
        if (cfg.eval.every > 0 or cfg.eval.every_nfe > 0) and cfg.data.eval
        else {}
    )


def build_prompts(cfg: Config):
    from .data import load_prompt_source

    train = load_prompt_source(cfg.data.train)
    test = (
        load_prompt_source(cfg.data.eval) if cfg.data.eval and (cfg.eval.every > 0 or cfg.eval.every_nfe > 0) else None
    )
    return train, test


def default_run_dir(cfg: Config) -> Path:
    return Path(cfg.train.output_dir or Path(cfg.train.runs_dir) / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")


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

    from .trainer import finish, make_accelerator, train

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
        if cfg.credit.name == "euphonium" and cfg.credit.process_reward:
            train_kwargs.setdefault("process_reward", build_process_reward(cfg, acc.device))
        run_dir = (
            broadcast_object_list([str(default_run_dir(cfg))])[0]
            if acc.num_processes > 1
            else str(default_run_dir(cfg))
        )
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


def run(args: argparse.Namespace) -> int:
    from .cli import guarded

    def job() -> int:
        cfg, resume = resolve_config(args.preset, list(args.overrides), args.resume)
        if args.print_config:
            from .config import to_dict

            print(json.dumps(to_dict(cfg), indent=1))
        else:
            main(cfg, resume=resume)
        return 0

    return guarded("train", job, "interrupted; resume with `flowalign train --resume auto`")


def cli(argv: list[str] | None = None) -> int:
    """``python scripts/train.py ...`` (same arguments as ``flowalign train``)."""
    parser = argparse.ArgumentParser(prog="train.py", description="Flow-GRPO training (see flowalign train --help).")
    add_arguments(parser)
    return run(parser.parse_args(argv))
