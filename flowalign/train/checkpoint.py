"""Full training state on disk (exact resume) and LoRA export in the diffusers format.

A checkpoint is a directory ``<run>/checkpoints/checkpoint-<iteration>`` holding

* ``<part>.safetensors`` per state part (trainable weights, optimizer, EMA): every tensor of the
  part's nested state (e.g. ``optimizer.state_dict()``) under its path, e.g. ``state/0/exp_avg``;
* ``rng_<rank>.safetensors`` + ``rng_<rank>.json``: each process's torch / numpy / python RNG states
  (and likewise any per-rank part: DeepSpeed's optimizer shards; FSDP2 parts are gathered whole);
* ``lora/`` (or ``transformer/`` for full fine-tuning): the exported weights, loadable by a stock
  pipeline (``StableDiffusion3Pipeline.load_lora_weights(dir)``);
* ``state.json``: scalars (iteration, optimizer step, counters), the non-tensor skeleton of every
  part, the config; and ``manifest.json``, written last: size and sha256 of every other file.

Atomicity: everything is written and fsynced into ``.tmp-checkpoint-<iteration>``, renamed into place
with ``os.replace`` and the parent directory fsynced; a run killed mid-save leaves only a temp directory
that is ignored and cleaned up. Re-saving an iteration renames the old directory aside
(``.old-checkpoint-<iteration>``, listed by ``checkpoints`` if its replacement never arrived) and
deletes it only once the new one is in place. Weights are checked for NaN/inf before anything is
written: a corrupt state never replaces a good checkpoint.

Verification (``integrity.verify``, against the manifest): ``latest`` and ``resume.resolve_resume`` skip a
damaged checkpoint (a file missing, truncated, changed or unreadable) for the newest intact one with
one ``CheckpointWarning`` naming the file; ``load`` and an explicitly named checkpoint refuse it with
one ValueError naming the file and the checkpoint to resume from instead. Checkpoints written before
manifests existed (no ``manifest.json``, no ``"manifest"`` in ``state.json``) are accepted unverified.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .integrity import MANIFEST, OLD, publish, read_tensors, verify, write_json, write_manifest, write_tensors

PREFIX = "checkpoint-"
_NAME = re.compile(rf"^({re.escape(OLD)})?{PREFIX}(\d+)$")


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped for an older intact one."""


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
def check_finite(tensors: dict[str, Tensor], what: str) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise RuntimeError(
            f"refusing to checkpoint {what}: non-finite values in {bad[:5]}; the previous checkpoint is kept."
        )


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The checkpoints of a run, oldest first: every ``checkpoint-N`` directory holding a state.json or
    a manifest (complete when renamed into place; ``verify`` tells whether it still is), or the
    ``.old-checkpoint-N`` of a re-save killed between its two renames."""
    root = Path(run_dir) / "checkpoints"
    found: dict[int, Path] = {}
    for p in root.iterdir() if root.is_dir() else []:
        m = _NAME.match(p.name)
        saved = m and ((p / "state.json").is_file() or (p / MANIFEST).is_file())
        if saved and (m.group(1) is None or int(m.group(2)) not in found):
            found[int(m.group(2))] = p
    return sorted(found.items())


def find_intact(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """(the newest intact checkpoint of a run or None, ``"<name>: <problem>"`` for each newer one)."""
    damaged = []
    for _, p in reversed(checkpoints(run_dir)):
        problem = verify(p)
        if problem is None:
            return p, damaged
        damaged.append(f"{p.name}: {problem}")
    return None, damaged


def warn_skipped(run_dir: str | Path, found: Path | None, damaged: list[str]) -> None:
    """One ``CheckpointWarning`` for the damaged checkpoints skipped (``find_intact``), if any."""
    if damaged:
        use = f"using {found.name}, the newest intact one" if found else "no intact checkpoint is left"
        where = Path(run_dir) / "checkpoints"
        warnings.warn(f"skipped damaged checkpoint(s) in {where}: {'; '.join(damaged)}; {use}.", CheckpointWarning, 3)


def latest(run_dir: str | Path) -> Path | None:
    """The newest intact checkpoint of a run; damaged newer ones are skipped with one
    ``CheckpointWarning`` naming the file and what is wrong with it."""
    found, damaged = find_intact(run_dir)
    warn_skipped(run_dir, found, damaged)
    return found


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
        write_tensors(tmp / f"{name}_{rank}.safetensors", tensors)
        write_json(tmp / f"{name}_{rank}.json", skeleton)
    barrier()
    if rank == 0:
        for name, (_, tensors) in flat.items():
            write_tensors(tmp / f"{name}.safetensors", tensors)
        if export is not None:
            export(tmp)
        skeletons = {name: sk for name, (sk, _) in flat.items()}
        state = {"iteration": iteration, "scalars": scalars, "parts": skeletons, "rank_parts": sorted(mine)}
        write_json(tmp / "state.json", {**state, "manifest": MANIFEST})
        write_manifest(tmp)
        publish(tmp, final)
        for _, old in checkpoints(run_dir)[: -max(1, keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(f".tmp-{PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return final


def _instead(path: Path) -> str:
    """What to use instead of the damaged checkpoint ``path``: the newest intact older one of its run."""
    m = _NAME.match(path.name)
    if m is not None and path.parent.name == "checkpoints":
        older = [p for i, p in checkpoints(path.parent.parent) if i < int(m.group(2))]
        good = next((p for p in reversed(older) if verify(p) is None), None)
        if good is not None:
            return f"resume from {good.name}, the newest intact checkpoint before it (--resume {good})"
    return "no intact checkpoint precedes it; start the run again without --resume"


def damaged(path: str | Path, problem: str) -> ValueError:
    path = Path(path)
    return ValueError(f"checkpoint {path} is damaged: {problem}; {_instead(path)}.")


def _read_json(file: Path, ckpt: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise damaged(ckpt, f"{file.name} is unreadable ({err})") from None


def load(path: str | Path, rank: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parts, scalars) of a checkpoint directory; ``parts`` includes this rank's own parts
    (``rng`` and any sharded state) under their plain names. The checkpoint is verified first: a
    damaged one (or an unreadable file of an unverified old one) is one ValueError naming the file
    and the checkpoint to resume from instead."""
    path = Path(path)
    if not (path / "state.json").is_file() and not (path / MANIFEST).is_file():
        raise ValueError(
            f"{path} is not a complete checkpoint (no state.json); pass a "
            f"'{PREFIX}NNNNNN' directory or a run directory holding checkpoints/."
        )
    problem = verify(path)
    if problem is not None:
        raise damaged(path, problem)
    state = _read_json(path / "state.json", path)

    def tensors(name: str) -> dict[str, Tensor]:
        return read_tensors(path / f"{name}.safetensors", lambda: _instead(path))

    parts = {name: unflatten(sk, tensors(name)) for name, sk in state["parts"].items()}
    for name in state.get("rank_parts", []):
        if not (path / f"{name}_{rank}.json").is_file():
            raise ValueError(
                f"{path} has no {name}_{rank}: it was saved by fewer processes; resume a "
                f"DeepSpeed run with the same number of processes."
            )
        parts[name] = unflatten(_read_json(path / f"{name}_{rank}.json", path), tensors(f"{name}_{rank}"))
    return parts, state["scalars"]


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
