"""The editing gallery page: source -> edit (and the comparison columns) per (seed, prompt) pair.

``save_edit_pair`` writes one PNG per column of a pair (``p<i>_s<seed>_<column>.png``, 8-bit, atomically,
via ``html.save_png``) and returns the pair's row; ``write_edit_page`` writes ``index.html`` (static,
self-contained: inline CSS, images by relative path): a summary table (mean of every metric per column),
then one table row per pair with the source prompt, the edit prompt, the seed and one cell per column
(the image, its metrics under it). ``benchmarks/bench_edit.py --gallery DIR`` builds it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .html import CSS, save_png, write_atomic

__all__ = ["EDIT_COLUMNS", "image_name", "save_edit_pair", "write_edit_page"]

EDIT_COLUMNS = ("source", "edit_control", "sdedit", "regenerate")


def image_name(prompt_index: int, seed: int, column: str) -> str:
    return f"p{prompt_index:03d}_s{seed}_{column}.png"


def save_edit_pair(
    out: Path, prompt_index: int, seed: int, prompt: str, target: str, images: dict[str, Any], metrics: dict
) -> dict:
    """Save ``images`` (column -> [3, H, W] in [0, 1]) of one pair under ``out`` -> the page's row:
    {prompt_index, seed, prompt, target, images: column -> file name, metrics: column -> {name: float}}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = {}
    for column, image in images.items():
        names[column] = image_name(prompt_index, seed, column)
        save_png(image, out / names[column])
    scores = {c: {k: float(v) for k, v in m.items()} for c, m in metrics.items()}
    return {"prompt_index": prompt_index, "seed": seed, "prompt": prompt, "target": target, "images": names,
            "metrics": scores}  # fmt: skip


def _cell(row: dict, column: str) -> str:
    e = html.escape
    if column not in row["images"]:
        return f"<td data-column='{e(column)}' class=na>not made</td>"
    scores = "<br>".join(f"{e(k)}: {v:.3f}" for k, v in row["metrics"].get(column, {}).items())
    img = f"<img src='{e(row['images'][column])}' alt='{e(column)}' title='{e(column)} | seed {row['seed']}'>"
    return f"<td data-column='{e(column)}'>{img}<div class=scores>{scores}</div></td>"


def _summary(rows: list[dict], columns: Sequence[str]) -> str:
    e, lines = html.escape, []
    names = sorted({k for r in rows for m in r["metrics"].values() for k in m})
    for c in columns:
        cells = []
        for k in names:
            vals = [r["metrics"][c][k] for r in rows if k in r["metrics"].get(c, {})]
            cells.append(f"<td>{sum(vals) / len(vals):.3f}</td>" if vals else "<td class=na>-</td>")
        lines.append(f"<tr><td>{e(c)}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th>{e(k)}</th>" for k in names)
    return f"<table id=summary><thead><tr><th>column</th>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def write_edit_page(out: Path, rows: list[dict], columns: Sequence[str] = EDIT_COLUMNS, info: str = "") -> Path:
    """``out``/index.html for the rows of ``save_edit_pair`` (sorted by prompt, then seed) -> its path."""
    e = html.escape
    rows = sorted(rows, key=lambda r: (r["prompt_index"], r["seed"]))
    heads = "".join(f"<th data-column='{e(c)}'>{e(c)}</th>" for c in columns)
    body = "".join(
        f"<tr data-key='p{r['prompt_index']:03d}_s{r['seed']}'><td>{e(r['prompt'])}</td><td>{e(r['target'])}</td>"
        f"<td>{r['seed']}</td>{''.join(_cell(r, c) for c in columns)}</tr>"
        for r in rows
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>flowalign edits</title><style>{CSS}</style>"
        f"</head><body><h1>flowalign edits</h1><p>{e(info)}</p><h2>Summary (mean over pairs)</h2>"
        f"{_summary(rows, columns)}<h2>Pairs: source &rarr; edit</h2><table id=gallery><thead><tr><th>source prompt"
        f"</th><th>edit prompt</th><th>seed</th>{heads}</tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )
    path = Path(out) / "index.html"
    write_atomic(path, page.encode())
    return path
