"""``flowalign gallery`` as a library: prompts x seeds x methods -> images, reward tables, HTML, plots.

* ``config.py``: ``GalleryConfig`` (what the command line sets) and ``GALLERY_PRESETS``; the validated
  ``GallerySettings`` (``make_settings``) and their fingerprint.
* ``specs.py``: method specs ``KIND[:key=value,...]`` -> ``MethodSpec`` (steering kinds hold the
  ``SteerMethod`` of ``flowalign steer``), checkpoints.
* ``run.py``: ``run_gallery(settings, out)`` draws, scores and records every missing image (resumable);
  ``gallery_job(cfg)`` is the command's one call.
* ``html.py`` / ``plots.py``: results files, summary tables, ``index.html``, ``plots/``.
* ``edit_page.py``: the editing page (source -> edit, SDEdit, regenerate per pair; ``bench_edit.py --gallery``).
"""

from .config import GALLERY_PRESETS, GalleryConfig, GallerySettings, make_settings, settings_from_config
from .edit_page import save_edit_pair, write_edit_page
from .html import format_table, summarize
from .plots import read_scalars
from .run import GalleryResult, gallery_job, run_gallery
from .specs import MethodSpec, check_steering, parse_method, parse_methods, resolve_checkpoint, steering_kwargs

__all__ = [
    "GALLERY_PRESETS",
    "GalleryConfig",
    "GalleryResult",
    "GallerySettings",
    "MethodSpec",
    "check_steering",
    "format_table",
    "gallery_job",
    "make_settings",
    "parse_method",
    "parse_methods",
    "read_scalars",
    "resolve_checkpoint",
    "run_gallery",
    "save_edit_pair",
    "settings_from_config",
    "steering_kwargs",
    "summarize",
    "write_edit_page",
]
