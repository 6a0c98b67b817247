"""From a config to objects: the model (frozen, with LoRA adapters or fully trainable), the reward,
the prompts and the run directory. Everything here reads ``Config`` and returns library objects.

Families (``families.py``): editing ones take a source image per prompt (``data.SOURCE_COLUMN``), video
ones get ``model.num_frames`` at load; a LoRA target list left at the SD3 default is replaced by the
family's own (``FAMILY_LORA_TARGETS``: wan, flux2), and with ``model.num_frames`` > 1 every image
reward is lifted to clips (``rewards.video.FrameReward``, mean over uniformly sampled frames).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any


def resolve_model_path(path: str) -> str:
    """'testbed' -> the shipped pipeline dir; a registered name or existing dir as is; 'owner/name'
    as a hub id; anything else is a missing path (one clear error)."""
    from ..models import MODELS

    if path == "testbed":
        from ..testbed.paths import pipeline_dir

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


def check_lora_targets(transformer: Any, targets: list[str], family: str | None = None) -> None:
    """Every target must name (as a suffix, as peft matches) at least one nn.Linear-like module; the
    error names the family's own list where it has one."""
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
        from .families import family_lora_targets

        own = family_lora_targets(family)
        hint = f" (the {family} list: model.lora_targets={','.join(own)})" if own else ""
        raise ValueError(
            f"LoRA target module(s) {missing or targets} are not in the {type(transformer).__name__}; "
            f"set model.lora_targets to names that exist, e.g. {leaves[:12]}{hint}."
        )


def _export_lora(pipeline_class: type, transformer: Any, directory: str | Path) -> None:
    """The adapter as ``<dir>/lora/pytorch_lora_weights.safetensors`` (stock ``load_lora_weights``)."""
    from .checkpoint import export_lora

    export_lora(pipeline_class, transformer, Path(directory) / "lora")


def _export_full(transformer: Any, directory: str | Path) -> None:
    """Fully fine-tuned weights as ``<dir>/transformer`` (``save_pretrained``)."""
    transformer.save_pretrained(str(Path(directory) / "transformer"))


def build_model(cfg, device: Any = "cpu") -> tuple[Any, Callable[[Path], None], Any]:
    """(FlowModel with trainable params set up, export_fn(dir), ref_model or None)."""
    import torch

    from ..models import MODELS, load_model
    from .families import VIDEO_FAMILIES, check_model_options, loaded_family, model_family

    check_model_options(cfg, device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.model.dtype]
    path = resolve_model_path(cfg.model.path)
    kw: dict[str, Any] = {"max_sequence_length": cfg.model.max_sequence_length}
    if dtype != torch.float32 and path not in MODELS:  # (saved pipelines load in fp32 by default)
        kw["torch_dtype"] = dtype
    if model_family(cfg) in VIDEO_FAMILIES:
        kw["num_frames"] = cfg.model.num_frames
    model = load_model(path, family=cfg.model.family, **kw)
    check_loaded(cfg, model, device)
    pipe = model.pipe
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.requires_grad_(False).eval()
    bare, ref_model = model.transformer, None
    if cfg.model.lora:
        from peft import LoraConfig

        targets = lora_targets(cfg, model)
        check_lora_targets(bare, targets, loaded_family(model))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            bare.add_adapter(
                LoraConfig(
                    r=cfg.model.lora_rank,
                    lora_alpha=cfg.model.lora_alpha,
                    init_lora_weights=cfg.model.lora_init,
                    target_modules=targets,
                )
            )
        for p in bare.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        export_fn = partial(_export_lora, type(pipe), bare)
    else:
        bare.float().requires_grad_(True)
        if getattr(cfg.objective.options, "beta", 0) > 0:  # the base weights must survive training: a frozen copy
            ref_model = copy.copy(model)
            ref_model.transformer = copy.deepcopy(bare).requires_grad_(False)
        export_fn = partial(_export_full, bare)
    if cfg.model.gradient_checkpointing:
        bare.enable_gradient_checkpointing()
    model.to(device)
    if ref_model is not None:
        ref_model.transformer.to(device)
    return model, export_fn, ref_model


def lora_targets(cfg, model: Any) -> list[str]:
    """``model.lora_targets``; left at the SD3 default, the family's own list where it has one."""
    from .config import SD3_LORA_TARGETS
    from .families import family_lora_targets, loaded_family

    own = family_lora_targets(loaded_family(model))
    return own if own is not None and list(cfg.model.lora_targets) == SD3_LORA_TARGETS else list(cfg.model.lora_targets)


def check_loaded(cfg, model: Any, device: Any = None) -> None:
    """What needs the loaded model: the resolution fits its size factor (one error naming
    model.resolution), and the attention kernel is switched (``models.attention.set_attention``)."""
    import torch

    from .families import VIDEO_FAMILIES, loaded_family

    res, kw = cfg.model.resolution, {}
    if loaded_family(model) in VIDEO_FAMILIES:
        kw["num_frames"] = cfg.model.num_frames
    try:
        model.initial_noise(1, res, res, generator=torch.Generator(model.device).manual_seed(0), **kw)
    except ValueError as err:
        raise ValueError(f"model.resolution={res} does not fit {type(model).__name__}: {err}") from None
    if cfg.model.attention != "sdpa":  # (sdpa is every transformer's default: nothing to switch)
        from ..models.attention import set_attention

        set_attention(model, cfg.model.attention, device)


def import_factory(spec: str) -> Callable:
    """'package.module:factory' -> the factory (a user-supplied reward); one clear error otherwise."""
    import importlib

    from ..rewards.registry import REWARDS

    if spec in REWARDS:  # a registered name with a colon: remote:URL (a served reward)
        return REWARDS[spec]
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


def build_reward(cfg, device: Any = "cpu"):
    """MultiReward over the named rewards; 'module:factory' names are built by their own factory."""
    from ..rewards import MultiReward

    options = {k: dict(v) for k, v in cfg.reward.options.items()}
    key = lambda n: n.replace(".", "_")  # noqa: E731  (module names cannot hold '.')
    custom = {key(n): import_factory(n)(**options.pop(n, {})) for n in cfg.reward.weights if ":" in n}
    weights = {key(n): w for n, w in cfg.reward.weights.items()}
    if cfg.model.num_frames > 1:  # clips: every image reward scores sampled frames
        from ..rewards import load_reward

        custom |= {n: load_reward(n, **options.pop(n, {})) for n in weights if n not in custom}
        custom = {n: lift_to_video(r) for n, r in custom.items()}
    return MultiReward(weights, rewards=custom, **options).to(device)


def lift_to_video(reward: Any) -> Any:
    """A clip reward as is; an image reward as ``FrameReward`` (its mean over uniformly sampled frames)."""
    from ..rewards.video import FrameReward, VideoReward

    return reward if isinstance(reward, VideoReward) else FrameReward(reward)


def build_process_reward(cfg, device: Any = "cpu"):
    """Euphonium's process reward ``credit.process_reward`` built with ``credit.process_options``, or
    None: the trainer then uses the training reward."""
    from ..rewards import load_reward

    name = getattr(cfg.credit.options, "process_reward", "")
    return load_reward(name, **dict(cfg.credit.options.process_options)).to(device) if name else None


def build_eval_metrics(cfg, device: Any = "cpu") -> dict[str, Any]:
    from ..rewards import load_reward

    return (
        {
            name: load_reward(spec["reward"], **{k: v for k, v in spec.items() if k != "reward"}).to(device)
            for name, spec in cfg.eval.metrics.items()
        }
        if (cfg.eval.every > 0 or cfg.eval.every_nfe > 0) and cfg.data.eval
        else {}
    )


def build_prompts(cfg):
    from .data import check_sources, load_prompt_source

    train = load_prompt_source(cfg.data.train)
    test = (
        load_prompt_source(cfg.data.eval) if cfg.data.eval and (cfg.eval.every > 0 or cfg.eval.every_nfe > 0) else None
    )
    from .families import EDIT_FAMILIES, model_family

    if (family := model_family(cfg)) in EDIT_FAMILIES:
        check_sources(train, family, "data.train")
        if test is not None:
            check_sources(test, family, "data.eval")
    return train, test


def default_run_dir(cfg) -> Path:
    return Path(cfg.train.output_dir or Path(cfg.train.runs_dir) / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
