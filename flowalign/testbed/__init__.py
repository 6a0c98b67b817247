"""The shapes-world testbed: procedural data, a tiny real SD3 pipeline, and the scorers trained on it.

Submodules (imported lazily; ``import flowalign.testbed`` stays light):
  * ``world``    — generator, grammar (``parse_prompt``), labels, clause rules, prompt splits;
  * ``corrupt``  — image corruptions for the artifact detector;
  * ``scorers``  — checker / aesthetic proxy / artifact detector modules and their loaders;
  * ``pipeline`` — building and loading the tiny ``StableDiffusion3Pipeline``;
  * ``train``    — the training routines behind ``scripts/train_testbed.py``;
  * ``cli``      — ``flowalign testbed sample | eval``.
"""

from __future__ import annotations

from .paths import TESTBED_DIR, assets_dir

__all__ = ["TESTBED_DIR", "assets_dir"]
