"""The results files and reports of ``flowalign gallery``. Each image is written atomically, then
its row is appended to results.jsonl in one fsync'ed write (``read_results`` cuts off a row torn by a
crash). Everything else is rebuilt from those rows at the end of every run:
* ``summarize`` / ``format_table``: mean ± std (sample std, n - 1; 0 for one image) of every reward
  per method, with mean NFE and seconds per image; unavailable methods keep a row saying why.
* ``results.csv``, ``summary.json``, ``summary.md``.
* ``index.html``: static and self-contained (inline CSS / JS, images and MP4 clips by relative path,
  clips in looping muted ``<video>`` elements). Rows are
  prompt x seed, columns are methods, the scores under each image. Clicking a reward header sorts
  the rows by that reward's mean over the methods shown (click again: ascending); checkboxes filter
  the methods. The state lives in the URL hash, ``#sort=<reward>&dir=desc&methods=a,b``, so a
  sorted view can be linked.
* ``plots/`` (``plots.py``): reward per method, reward vs NFE, training curves.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from .plots import write_plots


# --- results on disk ----------------------------------------------------------------------------------
def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """key -> row of results.jsonl; a torn last line (a run killed mid-write) is cut off the file."""
    if not path.is_file():
        return {}
    data, rows, good = path.read_bytes(), {}, 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError
            row = json.loads(line)
        except ValueError:
            break
        rows[row["key"]] = row
        good += len(line)
    if good != len(data):
        if data[good:].count(b"\n") > 1:
            raise ValueError(f"{path} is corrupt after byte {good}; remove the bad lines or pass a new --out.")
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One JSON line, written with one write() and fsync'ed (a crash leaves at most a torn last line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_png(image: Any, path: Path) -> Any:
    """Image [3, H, W] in [0, 1] -> 8-bit PNG at ``path`` (atomically); returns exactly the saved pixels
    as [3, H, W] float in [0, 1], which is what the rewards score."""
    import numpy as np
    import torch
    from PIL import Image

    arr = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    write_atomic(path, buf.getvalue())
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255


# --- tables -------------------------------------------------------------------------------------------
def summarize(
    rows: list[dict], methods: list[str], rewards: list[str], unavailable: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """method -> {"n", "rewards": {name: [mean, std]}, "nfe", "seconds"} (or {"n": 0, "unavailable"})."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        if m in (unavailable or {}):
            out[m] = {"n": 0, "unavailable": unavailable[m]}
            continue
        mine = [r for r in rows if r["method"] == m]
        out[m] = {
            "n": len(mine),
            "rewards": {k: list(mean_std([r["rewards"][k] for r in mine])) for k in rewards},
            "nfe": mean_std([r["nfe"] for r in mine])[0],
            "seconds": mean_std([r["seconds"] for r in mine])[0],
        }
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def format_table(summary: dict[str, dict[str, Any]], rewards: list[str]) -> str:
    """A markdown table: rows = methods, columns = rewards (mean ± std), NFE and seconds per image."""
    head = ["method", "n", *rewards, "NFE/image", "s/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in summary.items():
        if "unavailable" in s:
            lines.append(f"| {m} | 0 | unavailable: {s['unavailable']} |" + " |" * (len(head) - 3))
            continue
        cells = [f"{s['rewards'][k][0]:.3f} ± {s['rewards'][k][1]:.3f}" for k in rewards]
        lines.append("| " + " | ".join([m, str(s["n"]), *cells, f"{s['nfe']:.0f}", f"{s['seconds']:.2f}"]) + " |")
    return "\n".join(lines)


def write_reports(
    out: Path,
    fingerprint: dict,
    resolved: dict,
    settings: Any,
    rows: list[dict],
    unavailable: dict[str, str],
    plots: bool = True,
) -> tuple[dict, str]:
    """results.csv, summary.{json,md}, plots/*.png and index.html -> (summary, table)."""
    methods = [m.label for m in settings.methods]
    rewards = list(settings.rewards)
    summary = summarize(rows, methods, rewards, unavailable)
    table = format_table(summary, rewards)
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt_index", "prompt", "seed", "method", *rewards, "nfe", "seconds", "image"])
        for r in rows:
            w.writerow(
                [
                    r["prompt_index"],
                    r["prompt"],
                    r["seed"],
                    r["method"],
                    *(r["rewards"][k] for k in rewards),
                    r["nfe"],
                    r["seconds"],
                    r["image"],
                ]
            )
    (out / "summary.json").write_text(json.dumps({"summary": summary, "resolved": resolved}, indent=1))
    (out / "summary.md").write_text(table + "\n")
    figures = write_plots(out, summary, rows, settings) if plots else []
    (out / "index.html").write_text(
        render_html(fingerprint, resolved, settings, rows, summary, figures), encoding="utf-8"
    )
    return summary, table


CSS = """body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;font-size:13px}th{background:#f2f2f2}
#gallery img,#gallery video{width:96px;height:96px;image-rendering:pixelated;display:block}
th.sort{cursor:pointer;color:#1a4fa0}
th.sort[data-dir=desc]::after{content:" \\25BE"}th.sort[data-dir=asc]::after{content:" \\25B4"}
.scores{font-size:11px;color:#444;white-space:nowrap}.na{color:#999;font-style:italic}td.mean{text-align:right}
#plots img{max-height:300px;max-width:100%;margin:4px;border:1px solid #ddd}
#filter{margin:.6em 0}#filter label{margin-right:1em}"""

JS = """const D=JSON.parse(document.getElementById('gallery-data').textContent);
const tbody=document.querySelector('#gallery tbody'),rowsEl=Array.from(tbody.rows);
const state={sort:null,dir:'desc'};
const boxes=Array.from(document.querySelectorAll('#filter input'));
function shown(){return boxes.filter(b=>b.checked).map(b=>b.dataset.method);}
function rowValue(i,r){const v=shown().map(m=>(D.rows[i].scores[m]||{})[r]).filter(x=>typeof x==='number');
  return v.length?v.reduce((a,b)=>a+b,0)/v.length:null;}
function render(){const ms=shown();
  document.querySelectorAll('#gallery [data-method]').forEach(el=>{
    el.style.display=ms.includes(el.dataset.method)?'':'none';});
  rowsEl.forEach((tr,i)=>tr.querySelectorAll('td.mean').forEach(td=>{const v=rowValue(i,td.dataset.reward);
    td.textContent=v===null?'-':v.toFixed(3);}));
  const order=rowsEl.map((_,i)=>i);
  if(state.sort){const s=state.dir==='asc'?1:-1;
    order.sort((a,b)=>{const x=rowValue(a,state.sort),y=rowValue(b,state.sort);
    if(x===null||y===null)return x===y?a-b:(x===null?1:-1);return x===y?a-b:s*(x-y);});}
  order.forEach(i=>tbody.appendChild(rowsEl[i]));
  document.querySelectorAll('#gallery th.sort').forEach(th=>{
    th.dataset.dir=th.dataset.reward===state.sort?state.dir:'';});
  const p=[];if(state.sort)p.push('sort='+encodeURIComponent(state.sort),'dir='+state.dir);
  if(ms.length!==D.methods.length)p.push('methods='+ms.map(encodeURIComponent).join(','));
  const h=p.join('&');if(location.hash.slice(1)!==h)history.replaceState(null,'',h?'#'+h:location.pathname);}
function fromHash(){const p=new URLSearchParams(location.hash.slice(1));
  state.sort=D.rewards.includes(p.get('sort'))?p.get('sort'):null;state.dir=p.get('dir')==='asc'?'asc':'desc';
  const ms=p.get('methods')!==null?p.get('methods').split(','):D.methods;
  boxes.forEach(b=>{b.checked=ms.includes(b.dataset.method);});render();}
document.querySelectorAll('#gallery th.sort').forEach(th=>th.addEventListener('click',()=>{const r=th.dataset.reward;
  state.dir=state.sort===r&&state.dir==='desc'?'asc':'desc';state.sort=r;render();}));
boxes.forEach(b=>b.addEventListener('change',render));
window.addEventListener('hashchange',fromHash);fromHash();"""


def render_html(
    fingerprint: dict, resolved: dict, settings: Any, rows: list[dict], summary: dict, figures: list[str]
) -> str:
    e = html.escape
    methods, rewards = [m.label for m in settings.methods], list(settings.rewards)
    by_key = {(r["prompt_index"], r["seed"], r["method"]): r for r in rows}
    grid = [(i, s) for i in range(len(settings.prompts)) for s in settings.seeds]
    data = {
        "rewards": rewards,
        "methods": methods,
        "rows": [
            {
                "prompt_index": i,
                "seed": s,
                "scores": {m: by_key[(i, s, m)]["rewards"] for m in methods if (i, s, m) in by_key},
            }
            for i, s in grid
        ],
    }
    spec = {m.label: m.spec for m in settings.methods}
    shead = "".join(f"<th>{e(k)}</th>" for k in rewards)
    body = [_gallery_row(n, i, s, settings, by_key, summary) for n, (i, s) in enumerate(grid)]
    heads = "".join(
        f"<th class=sort data-reward='{e(k)}' title='sort by {e(k)}: mean over the shown methods'>{e(k)}</th>"
        for k in rewards
    )
    mheads = "".join(
        f"<th data-method='{e(m)}' title='{e(spec[m])}'>{e(m)}"
        + ("<br><small class=na>unavailable</small>" if "unavailable" in summary.get(m, {}) else "")
        + "</th>"
        for m in methods
    )
    boxes = "".join(f"<label><input type=checkbox data-method='{e(m)}' checked> {e(m)}</label>" for m in methods)
    plots = "".join(f"<img src='{e(f)}' alt='{e(f)}'>" for f in figures)
    info = (
        f"model <b>{e(str(fingerprint['model']))}</b> ({e(str(fingerprint['model_path']))}), "
        f"{resolved['steps']} steps, "
        f"cfg {resolved['cfg']}, {resolved['size']} px, {len(settings.prompts)} prompts x seeds {settings.seeds}. "
        f"Rows: prompt x seed; columns: methods. Click a reward header to sort the rows by its mean over the "
        f"methods shown; link a view as <code>#sort=&lt;reward&gt;&amp;dir=desc&amp;methods=a,b</code>."
    )
    blob = json.dumps(data).replace("</", "<\\/")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>flowalign gallery</title><style>{CSS}</style>"
        f"</head><body><h1>flowalign gallery</h1><p>{info}</p><h2>Summary (mean ± std)</h2><table id=summary>"
        f"<thead><tr><th>method</th><th>n</th>{shead}<th>NFE/image</th><th>s/image</th></tr></thead><tbody>"
        f"{''.join(_summary_rows(summary, rewards, spec))}</tbody></table><div id=plots>{plots}</div>"
        f"<div id=filter>Methods: {boxes}</div>"
        f"<table id=gallery><thead><tr><th>#</th><th>prompt</th><th>seed</th>{heads}{mheads}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table><script type='application/json' id='gallery-data'>{blob}</script>"
        f"<script>{JS}</script></body></html>\n"
    )


def _summary_rows(summary: dict, rewards: list[str], spec: dict[str, str]) -> list[str]:
    e, out = html.escape, []
    for m, s in summary.items():
        if "unavailable" in s:
            out.append(
                f"<tr><td>{e(m)}</td><td>0</td><td class=na colspan={len(rewards) + 2}>unavailable: "
                f"{e(s['unavailable'])}</td></tr>"
            )
        else:
            cells = "".join(f"<td>{s['rewards'][k][0]:.3f} ± {s['rewards'][k][1]:.3f}</td>" for k in rewards)
            out.append(
                f"<tr><td title='{e(spec[m])}'>{e(m)}</td><td>{s['n']}</td>{cells}<td>{s['nfe']:.0f}</td>"
                f"<td>{s['seconds']:.2f}</td></tr>"
            )
    return out


def _gallery_row(n: int, i: int, s: int, settings: Any, by_key: dict, summary: dict) -> str:
    """Row n of the gallery table: prompt i, seed s, the reward means (filled by the JS), one cell per method."""
    e, rewards = html.escape, list(settings.rewards)
    cells = []
    for m in (m.label for m in settings.methods):
        r = by_key.get((i, s, m))
        if m in summary and "unavailable" in summary[m]:
            cells.append(f"<td data-method='{e(m)}' class=na>unavailable</td>")
        elif r is None:
            cells.append(f"<td data-method='{e(m)}' class=na>not made</td>")
        else:
            sc = "<br>".join(f"{e(k)}: {r['rewards'][k]:.3f}" for k in rewards)
            title = f"title='{e(r['prompt'])} | seed {s} | {e(m)}'"
            media = (
                f"<video src='{e(r['image'])}' {title} autoplay loop muted playsinline preload=auto></video>"
                if r["image"].endswith(".mp4")
                else f"<img src='{e(r['image'])}' alt='{e(r['key'])}' {title}>"
            )
            cells.append(f"<td data-method='{e(m)}'>{media}<div class=scores>{sc}<br>NFE {r['nfe']}</div></td>")
    means = "".join(f"<td class=mean data-reward='{e(k)}'></td>" for k in rewards)
    return (
        f"<tr data-row={n} data-key='p{i:03d}_s{s}'><td>{i}</td><td>{e(settings.prompts[i])}</td>"
        f"<td>{s}</td>{means}{''.join(cells)}</tr>"
    )
