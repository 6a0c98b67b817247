"""What the trainer, steering and the gallery need to know about a model family, before or after
loading: ``EDIT_FAMILIES`` take a source image per prompt (``data.SOURCE_COLUMN``), ``VIDEO_FAMILIES``
make clips and get ``model.num_frames`` at load; a family's own LoRA targets; and the start-up checks
of ``model.attention`` and ``model.num_frames`` (``check_model_options``, ``check_frames``); at sampling
time, the ``encode`` / ``initial_noise`` keywords and reward metadata of sources and frames."""

from __future__ import annotations

import os
from typing import Any

ATTENTION = ("sdpa", "xformers")
EDIT_FAMILIES = ("qwenimage_edit", "flux_kontext")  # encode(..., images=) needs a source image per prompt
VIDEO_FAMILIES = ("wan",)  # latents [B, C, F', H', W'], decode -> [B, F, 3, H, W]
_TINY = {"tiny-sd3": "sd3", "tiny-flux": "flux", "tiny-flux2": "flux2", "tiny-flux-kontext": "flux_kontext"}
_TINY.update({"tiny-qwenimage": "qwenimage", "tiny-qwenimage-edit": "qwenimage_edit", "tiny-wan": "wan"})


def model_family(cfg) -> str | None:
    """The family ``cfg.model`` names, told without loading it (None: not known before loading)."""
    from ..models import detect_family

    if cfg.model.family is not None:
        return cfg.model.family
    if cfg.model.path in _TINY or cfg.model.path == "testbed":
        return _TINY.get(cfg.model.path, "sd3")
    try:
        return detect_family(os.path.expanduser(cfg.model.path))
    except ValueError:
        return None


def loaded_family(model: Any) -> str | None:
    """The family of a loaded FlowModel (None for the analytic ones)."""
    from ..models import FAMILIES

    return next((f for f, c in FAMILIES.items() if type(model) is c), None) or next(
        (f for f, c in FAMILIES.items() if isinstance(model, c)), None
    )


def family_lora_targets(family: str | None) -> list[str] | None:
    if family == "wan":
        from ..models.wan import WAN_LORA_TARGETS

        return list(WAN_LORA_TARGETS)
    if family == "flux2":
        from ..models.flux2 import FLUX2_LORA_TARGETS

        return list(FLUX2_LORA_TARGETS)
    return None


def check_model_options(cfg, device=None) -> None:
    """The attention kernel (xformers needs a CUDA device and the package) and the frame count (1 for
    image families; 4k+1 for video families), as far as the family is known before loading."""
    import importlib.util

    import torch

    m = cfg.model
    if m.attention not in ATTENTION:
        raise ValueError(f"model.attention={m.attention!r} is unknown; choose one of {ATTENTION}.")
    if m.attention == "xformers":
        cuda = device is None or torch.device(device).type == "cuda"
        if cfg.train.cpu or not torch.cuda.is_available() or not cuda:
            raise ValueError(
                "model.attention='xformers' needs a CUDA GPU (xformers has no CPU kernels), but this run is on the "
                "CPU; use model.attention=sdpa."
            )
        if importlib.util.find_spec("xformers") is None:
            raise ValueError(
                "model.attention='xformers' needs the xformers package: pip install 'flowalign[xformers]'."
            )
    family = model_family(cfg)
    if family in VIDEO_FAMILIES:
        from ..models.wan import check_num_frames

        try:
            check_num_frames(m.num_frames)
        except ValueError as err:
            raise ValueError(f"model.{err}") from None
    elif m.num_frames != 1 and family is not None:
        raise ValueError(
            f"model.num_frames={m.num_frames} makes videos, but model family {family!r} makes images; set "
            f"model.num_frames=1, or use a video family ({', '.join(VIDEO_FAMILIES)})."
        )


def check_frames(model: str, num_frames: int) -> int | None:
    """A frame count for ``model``: 4k+1 for a video family (returned), 1 for an image family (None:
    nothing to pass); anything else is one ValueError."""
    from .config import Config, ModelConfig

    family = model_family(Config(model=ModelConfig(path=model)))
    if family in VIDEO_FAMILIES:
        from ..models.wan import check_num_frames

        return check_num_frames(num_frames)
    if num_frames != 1:
        raise ValueError(
            f"num_frames={num_frames} makes videos, but {model!r} is an image model; leave num_frames unset."
        )
    return None


# --- source images (editing families) and frames (video families) at sampling time ---------------------
def source_kw(model, images: Any) -> dict:
    """``encode``'s ``images=`` for an editing model (one clear error without them); {} otherwise."""
    family = loaded_family(model)
    if family not in EDIT_FAMILIES:
        return {}
    if images is None:
        from .data import SOURCE_COLUMN

        raise ValueError(
            f"model family {family!r} edits a source image, but these prompts have none: give every prompt one in "
            f"an {SOURCE_COLUMN!r} column (a .jsonl prompt file, e.g. "
            f'{{"prompt": "make the circle red", "{SOURCE_COLUMN}": "sources/0.png"}}).'
        )
    return {"images": images}


def frames_kw(cfg) -> dict:
    """``initial_noise``'s ``num_frames=`` for videos (``model.num_frames`` > 1); {} for images."""
    return {"num_frames": cfg.model.num_frames} if cfg.model.num_frames != 1 else {}


def batch_sources(model, prompts, index: list[int], cfg) -> Any:
    """The source images [B, 3, R, R] of rows ``index`` for an editing model; None for other models."""
    from .data import source_images

    if loaded_family(model) not in EDIT_FAMILIES:
        return None
    if not any(prompts.metadata):
        source_kw(model, None)  # the clear error: no source column at all
    return source_images(prompts, index, cfg.model.resolution)


def with_sources(meta: dict, sources: Any) -> dict:
    """Metadata columns for the rewards, plus ``source_images`` when there are sources."""
    return meta if sources is None else {**meta, "source_images": sources}
