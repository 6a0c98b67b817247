"""Where the shipped testbed assets live (``<repo>/assets/testbed``), resolved from the package."""

from __future__ import annotations

import os
from pathlib import Path

TESTBED_DIR = Path(__file__).resolve().parents[2] / "assets" / "testbed"
ENV_VAR = "FLOWALIGN_TESTBED_DIR"  # overrides TESTBED_DIR (e.g. a non-editable install)


def assets_dir(path: str | os.PathLike | None = None, require: str | None = None) -> Path:
    """The testbed assets directory (``path``, else $FLOWALIGN_TESTBED_DIR, else ``TESTBED_DIR``).

    ``require`` names a file or folder inside it that must exist; a missing one is one clear
    ValueError saying how to get the assets.
    """
    root = Path(path if path is not None else os.environ.get(ENV_VAR, TESTBED_DIR))
    target = root / require if require else root
    if not target.exists():
        raise ValueError(
            f"testbed assets not found: {target} does not exist. The assets ship in the repository "
            f"under assets/testbed (the package looks for {TESTBED_DIR}); with a non-editable install "
            f"set {ENV_VAR}=/path/to/assets/testbed, or rebuild them with "
            f"`python scripts/train_testbed.py --out {root}`."
        )
    return root


def pipeline_dir(path: str | os.PathLike | None = None) -> Path:
    """The saved ``StableDiffusion3Pipeline`` folder inside the assets."""
    return assets_dir(path, "pipeline") / "pipeline"
