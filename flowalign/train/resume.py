"""Which checkpoint a run resumes from: ``--resume DIR|auto`` resolved to an intact checkpoint directory
(damaged newer ones skipped with one ``CheckpointWarning``, an explicitly named damaged one refused with
one ValueError naming the file). How a checkpoint is written and read: ``checkpoint.py``."""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import _NAME, PREFIX, checkpoints, damaged, find_intact, warn_skipped
from .integrity import MANIFEST, verify


def newest_intact(run: Path, what: str, fix: str) -> Path | None:
    """The newest intact checkpoint of ``run`` (one warning for damaged newer ones); None when it has no
    checkpoint; one ValueError naming ``what`` and the ``fix`` when every checkpoint it has is damaged."""
    if not checkpoints(run):
        return None
    found, bad = find_intact(run)
    if found is None:
        raise ValueError(f"{what}: every checkpoint in {run / 'checkpoints'} is damaged ({'; '.join(bad)}); {fix}")
    warn_skipped(run, found, bad)
    return found


def resolve_resume(spec: str, run_dir: str | Path | None, runs_dir: str | Path, preset: str) -> Path:
    """``--resume DIR|auto`` -> an intact checkpoint directory. ``auto``: the newest intact checkpoint
    of ``run_dir`` if given, else of the newest run of this preset under ``runs_dir`` that has
    checkpoints; a run directory: its newest intact checkpoint (damaged newer ones are skipped with
    one ``CheckpointWarning``); a checkpoint directory: that one if intact, else one ValueError naming
    the damaged file and the checkpoint to resume from instead. Old checkpoints without a manifest
    are not verified."""
    if spec != "auto":
        path = Path(spec)
        if any((path / f).is_file() for f in ("state.json", MANIFEST)) or (_NAME.match(path.name) and path.is_dir()):
            problem = verify(path)
            if problem is not None:
                raise damaged(path, problem)
            return path
        found = newest_intact(path, f"--resume {spec}", "start the run again without --resume.")
        if found is None:
            raise ValueError(
                f"--resume {spec}: no complete checkpoint there (expected a "
                f"'{PREFIX}NNNNNN' directory or a run directory with checkpoints/)."
            )
        return found
    candidates = [Path(run_dir)] if run_dir else sorted(Path(runs_dir).glob(f"{preset}-*"), key=os.path.getmtime)
    for run in reversed(candidates):
        found = newest_intact(run, f"--resume {spec}", "start the run again without --resume.")
        if found is not None:
            return found
    where = run_dir or f"{runs_dir}/{preset}-*"
    raise ValueError(
        f"--resume auto: no complete checkpoint found in {where}; start without --resume "
        f"or pass --resume <run or checkpoint dir>."
    )
