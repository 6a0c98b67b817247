"""Model adapters behind the one ``FlowModel`` contract, and ``load_model`` to build one by name.

* ``FAMILIES``: family name -> adapter class with ``from_pretrained(id_or_dir, **kw)``.
* ``MODELS``: ready-made names -> factory ``(**kw) -> FlowModel`` that need no weights on disk
  (the tiny offline pipelines; other modules may register more, e.g. analytic mixtures).

Nothing heavy is imported here: diffusers is imported by the adapters when they need it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from .attention import ATTENTION_KINDS, check_attention, set_attention
from .base import FlowModel
from .common import _looks_local, _offline, family_of_class, pipeline_family
from .flux import FluxModel
from .flux2 import Flux2Model, subfamily_of_class, subfamily_of_name, subfamily_of_pipeline
from .flux2 import tiny_flux2 as _tiny_flux2  # aliased: the name must stay the submodule tiny_flux2's
from .flux_kontext import FluxKontextModel, tiny_flux_kontext
from .qwenimage import QwenImageModel, qwen_family, tiny_qwenimage
from .qwenimage_edit import QwenImageEditModel, tiny_qwenimage_edit
from .sd3 import SD3Model
from .tiny_wan import tiny_wan
from .wan import WanModel, wan_family


def _tiny_sd3(seed: int = 0, text_encoder_3: bool = False, **kw: Any) -> SD3Model:
    from .tiny import tiny_sd3_pipeline

    return SD3Model(tiny_sd3_pipeline(seed=seed, text_encoder_3=text_encoder_3), **kw)


def _tiny_flux(seed: int = 0, **kw: Any) -> FluxModel:
    from .tiny import tiny_flux_pipeline

    kw.setdefault("max_sequence_length", 32)
    return FluxModel(tiny_flux_pipeline(seed=seed), **kw)


def _analytic_2d(**kw: Any) -> FlowModel:
    """A 2-D three-component Gaussian mixture with a closed-form velocity (exactness tests)."""
    from .analytic import GaussianMixtureFlow

    return GaussianMixtureFlow(
        means=[[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]],
        stds=[[0.5, 0.3], [0.4, 0.6], [0.3, 0.3]],
        weights=[0.3, 0.5, 0.2],
        **kw,
    )


FAMILIES: dict[str, type] = {"sd3": SD3Model, "flux": FluxModel}
FAMILIES.update({"flux2": Flux2Model, "flux_kontext": FluxKontextModel})
MODELS: dict[str, Callable[..., FlowModel]] = {
    "tiny-sd3": _tiny_sd3,
    "tiny-flux": _tiny_flux,
    "tiny-flux2": _tiny_flux2,
    "tiny-flux-kontext": tiny_flux_kontext,
    "analytic-2d": _analytic_2d,
}
FAMILIES["wan"], MODELS["tiny-wan"] = WanModel, tiny_wan
FAMILIES.update({"qwenimage": QwenImageModel, "qwenimage_edit": QwenImageEditModel})
MODELS.update({"tiny-qwenimage": tiny_qwenimage, "tiny-qwenimage-edit": tiny_qwenimage_edit})


def detect_family(name_or_path: Any) -> str:
    """'sd3' or 'flux' from a pipeline object, a saved pipeline's model_index.json, or a hub id."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        fam = subfamily_of_pipeline(name_or_path) or pipeline_family(name_or_path)
        fam = fam or wan_family(name_or_path) or qwen_family(name_or_path)
        if fam:
            return fam
        raise ValueError(
            f"cannot tell the model family of a {type(name_or_path).__name__}; pass a "
            f"StableDiffusion3Pipeline or FluxPipeline, or family= one of {sorted(FAMILIES)}."
        )
    path = os.path.expanduser(os.fspath(name_or_path))
    index = os.path.join(path, "model_index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            name = json.load(f).get("_class_name", "")
            fam = subfamily_of_class(name) or family_of_class(name)
            fam = fam or wan_family(name) or qwen_family(name)
        if fam:
            return fam
    low = os.path.basename(path.rstrip("/")).lower()
    if subfamily_of_name(low):
        return subfamily_of_name(low)
    if "flux" in low:
        return "flux"
    if "stable-diffusion-3" in low or "sd3" in low:
        return "sd3"
    if wan_family(low):
        return "wan"
    if qwen_family(low):
        return qwen_family(low)
    raise ValueError(
        f"cannot tell the model family of {name_or_path!r} (no model_index.json naming a "
        f"StableDiffusion3Pipeline or FluxPipeline); pass family= one of {sorted(FAMILIES)}."
    )


def _cached(repo_id: str) -> bool:
    """True when the local hub cache holds ``repo_id``'s ``model_index.json`` (loadable offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)
    except Exception:  # an id the hub library refuses as a repo name: not cached
        return False


def _hub_unreachable(timeout: float) -> str | None:
    """Why the hub cannot be reached now (None when it answers at all, even with an error status)."""
    from huggingface_hub import constants

    if _offline() or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 forbids downloading"
    try:
        from huggingface_hub.utils import get_session

        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as err:  # DNS, refused, timeout, proxy, TLS: all mean no download now
        return f"the hub {constants.ENDPOINT} cannot be reached ({type(err).__name__})"
    return None


def require_local_or_hub(id_or_dir: str, timeout: float = 5.0) -> None:
    """Before anything loads: a hub id ('owner/name') that is neither a local directory nor in the
    local hub cache, while the hub cannot be reached (HF_HUB_OFFLINE=1, no network), is ONE
    ValueError naming the id and how to pass a saved pipeline directory instead."""
    path = os.path.expanduser(os.fspath(id_or_dir))
    if os.path.isdir(path) or _looks_local(path) or path.count("/") != 1 or _cached(path):
        return
    why = _hub_unreachable(timeout)
    if why is None:
        return
    raise ValueError(
        f"model {path!r} is a hub id, not a local directory, and it is not in the local hub cache: {why}. "
        f"Download it where the hub is reachable (`hf download {path} --local-dir /path/to/saved/pipeline`, "
        f"or `DiffusionPipeline.from_pretrained({path!r}).save_pretrained(dir)`) and pass that directory: "
        f"model.path=/path/to/saved/pipeline (Python: load_model('/path/to/saved/pipeline'))."
    )


def load_model(name_or_path: Any, family: str | None = None, **kw: Any) -> FlowModel:
    """A ``FlowModel`` from a registered name (``MODELS``), a diffusers pipeline object, a saved
    pipeline directory or a hub id. ``kw`` go to the factory / ``from_pretrained`` (e.g.
    ``torch_dtype``, ``guidance_scale``, ``max_sequence_length``)."""
    if isinstance(name_or_path, FlowModel):
        return name_or_path
    if family is not None and family not in FAMILIES:
        raise ValueError(
            f"unknown model family {family!r}; choose one of {sorted(FAMILIES)} (or a name in {sorted(MODELS)})."
        )
    if isinstance(name_or_path, str) and name_or_path in MODELS:  # a preset's family= must match the name's
        model = MODELS[name_or_path](**kw)
        found = detect_family(model.pipe) if family is not None and hasattr(model, "pipe") else family
        if found != family:
            raise ValueError(f"{name_or_path!r} is a {found} model, not {family!r}; drop family= (model.family).")
        return model
    fam = family or detect_family(name_or_path)
    if isinstance(name_or_path, (str, os.PathLike)):
        path = os.fspath(name_or_path)
        require_local_or_hub(path)  # a hub id offline: one error before anything loads
        try:
            return FAMILIES[fam].from_pretrained(path, **kw)
        except Exception as err:  # a damaged local pipeline: name the file instead of diffusers' traceback
            if not os.path.isdir(path) or (bad := unreadable_weights(path)) is None:
                raise
            raise ValueError(
                f"cannot load the pipeline in {path}: {bad} ({type(err).__name__}); save it again with "
                f"`pipeline.save_pretrained(dir)` or pass another model path."
            ) from None
    return FAMILIES[fam](name_or_path, **kw)


def unreadable_weights(directory: str) -> str | None:
    """The first weights file of a saved pipeline that safetensors cannot read, described; or None."""
    from pathlib import Path

    from safetensors import safe_open

    for f in sorted(Path(directory).rglob("*.safetensors")):
        try:
            with safe_open(str(f), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118  (safe_open handles are not iterable)
                    handle.get_slice(key)
        except Exception as err:  # what safetensors raises for a damaged file varies by version
            return f"{f} is not a readable safetensors file ({err})"
    return None


__all__ = ["FlowModel", "SD3Model", "FluxModel", "FAMILIES", "MODELS", "detect_family", "load_model"]
__all__ += ["ATTENTION_KINDS", "check_attention", "set_attention", "require_local_or_hub"]
