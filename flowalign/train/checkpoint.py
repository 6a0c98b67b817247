"""Full training state on disk (exact resume) and LoRA export in the diffusers format.

A checkpoint is a directory ``<run>/checkpoints/checkpoint-<iteration>`` holding

* ``<part>.safetensors`` per state part (trainable weights, optimizer, EMA): every tensor of the
  part's nested state (e.g. ``optimizer.state_dict()``) under its path, e.g. ``state/0/exp_avg``;
* ``rng_<rank>.safetensors`` + ``rng_<rank>.json``: each process's torch / numpy / python RNG states
  (and likewise any per-rank part, e.g. a sharded optimizer under FSDP / DeepSpeed);
* ``lora/`` (or ``transformer/`` for full fine-tuning): the exported weights, loadable by a stock
  pipeline (``StableDiffusion3Pipeline.load_lora_weights(dir)``);
* ``state.json``, written last: scalars (iteration, optimizer step, counters), the non-tensor
  skeleton of every part, the config.

Atomicity: everything is written into ``.tmp-checkpoint-<iteration>`` and the directory is renamed
into place with ``os.replace``; a directory named ``checkpoint-*`` is therefore always complete, and
a run killed mid-save leaves only a temp directory that is ignored and cleaned up. Weights are
checked for NaN/inf before anything is written: a corrupt state never replaces a good checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

PREFIX = "checkpoint-"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


# --- nested state <-> (json skeleton, flat tensors) ----------------------------------------------
def flatten(obj: Any, prefix: str = "") -> tuple[Any, dict[str, Tensor]]:
    """Replace every tensor of a nested dict/list by ``{"__tensor__": path}``; return (skeleton, tensors)."""
    tensors: dict[str, Tensor] = {}

    def join(path: str, key: Any) -> str:
        return f"{path}/{key}" if path else str(key)

    def walk(x: Any, path: str) -> Any:
        if torch.is_tensor(x):
            tensors[path] = x.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(x, dict):
            return {
                "__dict__": [
                    [walk(k, join(path, f"key{i}")), walk(v, join(path, k))] for i, (k, v) in enumerate(x.items())
                ]
            }
        if isinstance(x, (list, tuple)):
            return {
                "__list__" if isinstance(x, list) else "__tuple__": [walk(v, join(path, i)) for i, v in enumerate(x)]
            }
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot checkpoint a {type(x).__name__} at {path!r}")

    return walk(obj, prefix), tensors


def unflatten(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten(v, tensors) for v in skeleton["__list__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten(v, tensors) for v in skeleton["__tuple__"])
    return skeleton


# --- RNG states ------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --- files -----------------------------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def check_finite(tensors: dict[str, Tensor], what: str) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise RuntimeError(
            f"refusing to checkpoint {what}: non-finite values in {bad[:5]}; the previous checkpoint is kept."
        )


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = []
    for p in root.iterdir() if root.is_dir() else []:
        m = _NAME.match(p.name)
        if m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1][1] if found else None


def save(
    run_dir: str | Path,
    iteration: int,
    parts: dict[str, Any],
    scalars: dict[str, Any],
    *,
    rank_parts: dict[str, Any] | None = None,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
    keep_last: int = 3,
    export: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint ``iteration`` atomically. Call on every rank: ``parts`` / ``scalars`` /
    ``export`` are written by rank 0, ``rank_parts`` (e.g. a sharded optimizer) by every rank as
    ``<name>_<rank>``, next to each rank's RNG state. Returns the final directory."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"{PREFIX}{iteration:06d}", root / f".tmp-{PREFIX}{iteration:06d}"
    mine = {**(rank_parts or {}), "rng": rng_state()}
    flat = {name: flatten(obj) for name, obj in (parts if rank == 0 else {}).items()}
    for name, (_, tensors) in [*flat.items(), *((n, flatten(o)) for n, o in mine.items())]:
        check_finite(tensors, name)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    for name, obj in mine.items():
        skeleton, tensors = flatten(obj)
        _write_tensors(tmp / f"{name}_{rank}.safetensors", tensors)
        _write_json(tmp / f"{name}_{rank}.json", skeleton)
    barrier()
    if rank == 0:
        for name, (_, tensors) in flat.items():
            _write_tensors(tmp / f"{name}.safetensors", tensors)
        if export is not None:
            export(tmp)
        skeletons = {name: sk for name, (sk, _) in flat.items()}
        _write_json(
            tmp / "state.json",
            {"iteration": iteration, "scalars": scalars, "parts": skeletons, "rank_parts": sorted(mine)},
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in checkpoints(run_dir)[: -max(1, keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(f".tmp-{PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return final


def load(path: str | Path, rank: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parts, scalars) of a checkpoint directory; ``parts`` includes this rank's own parts
    (``rng`` and any sharded state) under their plain names."""
    from safetensors.torch import load_file

    path = Path(path)
    state_file = path / "state.json"
    if not state_file.is_file():
        raise ValueError(
            f"{path} is not a complete checkpoint (no state.json); pass a "
            f"'{PREFIX}NNNNNN' directory or a run directory holding checkpoints/."
        )
    state = json.loads(state_file.read_text())
    parts = {name: unflatten(sk, load_file(str(path / f"{name}.safetensors"))) for name, sk in state["parts"].items()}
    for name in state.get("rank_parts", []):
        if not (path / f"{name}_{rank}.json").is_file():
            raise ValueError(
                f"{path} has no {name}_{rank}: it was saved by fewer processes; resume a "
                f"sharded run (FSDP / DeepSpeed) with the same number of processes."
            )
        parts[name] = unflatten(
            json.loads((path / f"{name}_{rank}.json").read_text()), load_file(str(path / f"{name}_{rank}.safetensors"))
        )
    return parts, state["scalars"]


def resolve_resume(spec: str, run_dir: str | Path | None, runs_dir: str | Path, preset: str) -> Path:
    """``--resume DIR|auto`` -> a checkpoint directory. ``auto``: the latest complete checkpoint of
    ``run_dir`` if given, else of the newest run of this preset under ``runs_dir``."""
    if spec != "auto":
        path = Path(spec)
        if (path / "state.json").is_file():
            return path
        found = latest(path)
        if found is None:
            raise ValueError(
                f"--resume {spec}: no complete checkpoint there (expected a "
                f"'{PREFIX}NNNNNN' directory or a run directory with checkpoints/)."
            )
        return found
    candidates = [Path(run_dir)] if run_dir else sorted(Path(runs_dir).glob(f"{preset}-*"), key=os.path.getmtime)
    for run in reversed(candidates):
        found = latest(run)
        if found is not None:
            return found
    where = run_dir or f"{runs_dir}/{preset}-*"
    raise ValueError(
        f"--resume auto: no complete checkpoint found in {where}; start without --resume "
        f"or pass --resume <run or checkpoint dir>."
    )


# --- export ------------------------------------------------------------------------------------------
def export_lora(pipeline_class: type, transformer: torch.nn.Module, directory: str | Path) -> None:
    """Write the transformer's peft adapter as ``pytorch_lora_weights.safetensors`` with the adapter
    config as metadata (so alpha / r survive), via the pipeline class's ``save_lora_weights``."""
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(transformer)
    meta = transformer.peft_config["default"].to_dict()
    pipeline_class.save_lora_weights(
        str(directory), transformer_lora_layers=layers, transformer_lora_adapter_metadata=meta
    )
