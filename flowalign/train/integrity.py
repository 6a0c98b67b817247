"""Durable, verifiable files for checkpoints and exports: fsync (files and directories), publishing a
directory by rename without ever leaving no copy on disk, a manifest (size + sha256 of every file)
and its verification, and safetensors reads that fail with one clear error naming the file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
OLD = ".old-"  # a published directory moved aside while its replacement is renamed into place


def write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def write_tensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make renames / new entries in ``path`` durable (a no-op where directories cannot be fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (e.g. what a library's ``save_*`` wrote)."""
    for f in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())] if root.is_dir() else []:
        fsync_dir(d)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    """``manifest.json``: the size and sha256 of every file under ``directory``; call it last (it
    fsyncs the tree first)."""
    fsync_tree(directory)
    files = {
        f.relative_to(directory).as_posix(): {"size": f.stat().st_size, "sha256": sha256(f)}
        for f in sorted(p for p in directory.rglob("*") if p.is_file() and p != directory / MANIFEST)
    }
    write_json(directory / MANIFEST, {"version": 1, "files": files})
    fsync_dir(directory)


def _problem(path: Path, name: str, meta: dict) -> str | None:
    f = path / name
    try:
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != meta["size"]:
            return f"{name} has {size} bytes, the manifest says {meta['size']} (truncated or overwritten)"
        if sha256(f) != meta["sha256"]:
            return f"{name} does not match its sha256 in the manifest (its bytes changed)"
    except OSError as err:
        return f"{name} is unreadable ({err.strerror or err})"
    return None


def verify(path: str | Path, under: str = "") -> str | None:
    """What is wrong with checkpoint directory ``path`` (None: intact): a file of its manifest
    missing, of another size, of another sha256 or unreadable, or the manifest itself unreadable;
    ``under`` checks only the files below that folder (e.g. ``"lora/"``). A checkpoint written
    before manifests existed (no ``manifest.json``, and a ``state.json`` that does not name one) is
    accepted as it always was: not verified."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        try:
            state = json.loads((path / "state.json").read_text())
        except FileNotFoundError:
            return "state.json is missing"
        except (OSError, ValueError) as err:
            return f"state.json is unreadable ({err})"
        return f"{MANIFEST} is missing" if isinstance(state, dict) and state.get("manifest") else None
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
        listed = [(str(name), dict(meta)) for name, meta in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{MANIFEST} is unreadable ({type(err).__name__}: {err})"
    for name, meta in listed:
        problem = _problem(path, name, meta) if name.startswith(under) else None
        if problem is not None:
            return problem
    return None


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final`` and fsync the parent; an existing ``final`` is renamed to
    ``.old-<name>`` first and deleted only once the new one is in place, so a complete copy is on
    disk at every moment."""
    aside = final.with_name(OLD + final.name)
    if final.exists() or final.is_symlink():
        remove(aside)
        os.replace(final, aside)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    remove(aside)


def export_atomic(run_dir: str | Path, export_fn: Callable[[Path], None]) -> list[Path]:
    """``export_fn(dir)`` into ``<run_dir>/.tmp-export``, then each entry it wrote (``lora/`` or
    ``transformer/``) fsynced and published into ``run_dir``: a run killed mid-export keeps the
    previous export whole. Returns the exported paths."""
    run_dir = Path(run_dir)
    tmp = run_dir / ".tmp-export"
    remove(tmp)
    tmp.mkdir(parents=True)
    export_fn(tmp)
    done = []
    for item in sorted(tmp.iterdir()):
        fsync_tree(item)
        publish(item, run_dir / item.name)
        done.append(run_dir / item.name)
    remove(tmp)
    return done


def read_tensors(file: str | Path, advice: str | Callable[[], str]) -> dict:
    """``safetensors.torch.load_file``; a truncated / damaged / non-safetensors file is one
    ValueError naming it and ending with ``advice`` (what to do instead; a callable: computed then)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise unreadable(file, err, advice() if callable(advice) else advice) from None


def unreadable(file: str | Path, err: BaseException, advice: str) -> ValueError:
    reason = (str(err).splitlines() or [type(err).__name__])[0]
    return ValueError(f"cannot read {file} ({reason}): it is truncated, damaged or not a safetensors file; {advice}.")
