"""Boundary checks on the inputs every command shares, made before anything loads or is written:
output paths, model paths (and what their files tell without loading them), image sizes, weights
files, prompts for the shapes world. Each raises ONE ValueError naming the key, the value and the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path


def check_output(path: str, key: str, folder: bool = True) -> None:
    """An output ``key=path`` that can be written: a folder (or file) that is not the other kind, below
    an existing writable folder; one ValueError naming the key, the path and the fix."""
    p = Path(os.path.expanduser(str(path)))
    if str(path).strip() == "":
        raise ValueError(f"{key}={path!r} is empty; pass an output {'folder' if folder else 'file'}.")
    if p.exists() and p.is_dir() != folder:
        what = "an existing file, not a folder" if folder else "an existing folder, not a file"
        raise ValueError(f"{key}={str(path)!r} is {what}; pass another path.")
    parent = next(q for q in [p.parent if not folder else p, *p.parents] if q.exists())
    if not parent.is_dir():
        raise ValueError(
            f"{key}={str(path)!r}: {parent} is a file, so nothing can be written below it; pass another path."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{key}={str(path)!r}: {parent} is not writable; pass a path in a folder you can write.")


def model_facts(model: str) -> dict[str, int]:
    """What a model's files tell without loading it: default ``steps``, the image-size ``factor`` and
    ``max_size`` (testbed and saved SD3 / Flux folders; {} for registered names and hub ids)."""
    if model == "testbed":
        from .testbed.paths import pipeline_dir
        from .testbed.pipeline import default_sampling

        folder, steps = pipeline_dir(), int(default_sampling()["num_inference_steps"])
    elif os.path.isfile(os.path.join(os.path.expanduser(model), "model_index.json")):
        folder, steps = Path(os.path.expanduser(model)), 28  # the SD3 / Flux adapters' default_steps
    else:
        return {}
    try:
        family = json.loads((folder / "model_index.json").read_text())["_class_name"]
        vae = 2 ** (len(json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"]) - 1)
        tr = json.loads((folder / "transformer" / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return {"steps": steps}
    if "Flux" in family:
        return {"steps": steps, "factor": vae * 2}
    factor = vae * int(tr.get("patch_size", 1))
    return {"steps": steps, "factor": factor} | (
        {"max_size": tr["pos_embed_max_size"] * factor} if tr.get("pos_embed_max_size") else {}
    )


def check_size(size: int | None, facts: dict[str, int], key: str) -> None:
    factor, top = facts.get("factor"), facts.get("max_size")
    if size is not None and factor and (size % factor or (top and size > top)):
        fix = min(max(factor, size // factor * factor), top or size)
        limit = f" and <= {top}" if top else ""
        raise ValueError(f"{key}={size} must be a multiple of {factor}{limit} for this model; use e.g. {key}={fix}.")


def check_model(model: str, key: str = "model") -> dict[str, int]:
    """The model exists (a registered name, the testbed, a saved folder or a hub id) -> ``model_facts``."""
    from .train.build import resolve_model_path

    try:
        resolve_model_path(model)
    except ValueError as err:
        raise ValueError(str(err).replace("model.path=", f"{key}=")) from None
    return model_facts(model)


def check_testbed_prompts(prompts: list[str], key: str) -> None:
    """The compositional reward judges shapes-world prompts only: refuse any other before sampling."""
    from .testbed.world import parse_prompt

    for p in prompts:
        try:
            parse_prompt(p)
        except ValueError as err:
            raise ValueError(
                f"{err}; the {key} 'compositional' judges only such prompts (or choose another {key})."
            ) from None


def check_weights(path: str, key: str) -> None:
    """A weights file or folder exists and its ``.safetensors`` files open (header and size agree)."""
    from safetensors import SafetensorError, safe_open

    p = Path(os.path.expanduser(path))
    if not p.exists():
        raise ValueError(f"{key}={path!r} does not exist; pass the weights file or folder.")
    for f in [p] if p.is_file() else sorted(p.rglob("*.safetensors"))[:64]:
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), "pt"):
                    pass
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{key}={path!r}: {f} is not a readable safetensors file ({err}); pass intact weights."
            ) from None
