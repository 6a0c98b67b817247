"""GenEval metadata prompt sets (Ghosh et al. 2023, "GenEval", arXiv 2310.11513; the file
``prompts/evaluation_metadata.jsonl``) and their evaluation by the testbed's checker.

A row is ``{"tag": ..., "include": [{"class", "count", "color"?, "position"?: [relation, index]}],
"exclude"?: [{"class", "count"}], "prompt": ...}``. ``load_geneval(path)`` validates every row (one
ValueError naming the line and the field) and returns a ``PromptSet`` whose metadata columns are
``tag`` / ``include`` / ``exclude``: the trainer hands them to rewards as they are (a GenEval file is
also a valid ``.jsonl`` prompt file for ``data.train``; this loader adds the schema check).

``geneval_testbed`` scores images against that clause metadata with GenEval's rules on the testbed
checker's count table and centroids (``Checker.describe``), a shape standing for a class:
  * include ``{class, count}``: at least ``count`` objects of the class (any colour);
  * ``color``: at least ``count`` objects of the class in that colour;
  * ``position [rel, j]``: the object's centroid is ``rel`` of object ``j``'s by more than the
    testbed's margin (2 px), both present;
  * exclude ``{class, count}``: fewer than ``count`` objects of the class (GenEval's exact counts are
    ``include count = n`` + ``exclude count = n + 1``).
``output="strict"`` (default) is GenEval's per-image correctness (every clause holds);
``"fraction"`` the fraction of clauses that hold. Counts are the checker's soft counts rounded.
Departures from GenEval: the detector is the testbed checker (not Mask2Former), colours are judged
on the whole colour+shape cell (GenEval classifies the first ``count`` detections' colours with
CLIP), and classes and colours must be the testbed's (one ValueError otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .base import Reward

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")


def check_object(obj: Any, n_include: int, where: str, excluded: bool = False) -> None:
    if not isinstance(obj, dict) or not isinstance(obj.get("class"), str):
        raise ValueError(f"{where}: each object needs a 'class' string, got {obj!r}.")
    count = obj.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{where}: 'count' must be an integer >= 1, got {count!r}.")
    extra = set(obj) - ({"class", "count"} if excluded else {"class", "count", "color", "position"})
    if extra:
        raise ValueError(f"{where}: unknown field(s) {sorted(extra)} in {obj!r}.")
    pos = obj.get("position")
    if pos is not None and not (
        isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS and pos[1] in range(n_include)
    ):
        raise ValueError(f"{where}: 'position' must be [relation, index] with relation in {RELATIONS}, got {pos!r}.")


def check_row(row: Any, where: str) -> dict:
    """One GenEval metadata row -> {"prompt", "tag", "include", "exclude"}; one ValueError if malformed."""
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise ValueError(f"{where}: a GenEval row is an object with a non-empty 'prompt'.")
    if row.get("tag") not in TAGS:
        raise ValueError(f"{where}: 'tag' {row.get('tag')!r} is not one of {TAGS}.")
    include, exclude = row.get("include"), row.get("exclude", [])
    if not isinstance(include, list) or not include or not isinstance(exclude, list):
        raise ValueError(f"{where}: 'include' must be a non-empty list of objects (and 'exclude' a list).")
    for k, obj in enumerate(include):
        check_object(obj, len(include), f"{where} include[{k}]")
    for k, obj in enumerate(exclude):
        check_object(obj, 0, f"{where} exclude[{k}]", excluded=True)
    return {"prompt": row["prompt"], "tag": row["tag"], "include": include, "exclude": exclude}


def load_geneval(path: str | Path):
    """GenEval's ``evaluation_metadata.jsonl`` -> PromptSet (metadata: tag, include, exclude)."""
    from ..train.data import PromptSet

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"GenEval metadata {str(path)!r} does not exist; pass evaluation_metadata.jsonl.")
    prompts, meta = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n} is not JSON ({err}).") from None
        row = check_row(row, f"{path}:{n}")
        prompts.append(row.pop("prompt"))
        meta.append(row)
    if not prompts:
        raise ValueError(f"GenEval metadata {str(path)!r} holds no rows.")
    return PromptSet(prompts, meta, root=str(path.parent))


def geneval_rows(prompts: list[str]) -> list[dict]:
    """Testbed prompts as GenEval rows (exact counts as include + exclude), e.g. to write a metadata file."""
    from ..testbed.world import parse_prompt

    tags = {"single": "single_object", "count": "counting", "pair": "two_object", "position": "position"}
    rows = []
    for p in prompts:
        lab = parse_prompt(p)
        include = [{"class": g.shape, "count": g.count, "color": g.color} for g in lab.groups]
        if lab.relation:
            include[0]["position"] = [lab.relation, 1]
        exclude = [{"class": g.shape, "count": g.count + 1} for g in lab.groups if lab.kind == "count"]
        rows.append({"tag": tags[lab.kind], "include": include, "exclude": exclude, "prompt": p})
    return rows


def clause_verdicts(counts: Tensor, centroids: Tensor, include: list, exclude: list) -> list[bool]:
    """GenEval's clauses of one image from its count table [C, S] and centroids [C, S, 2] (see the docstring)."""
    from ..testbed import world as W

    def cell(obj: dict) -> tuple[Tensor, Tensor]:
        s = _index(W.SHAPES, obj["class"], "class")
        if "color" in obj:
            c = _index(W.COLOR_NAMES, obj["color"], "color")
            return counts[c, s], centroids[c, s]
        n = counts[:, s]
        return n.sum(), (n[:, None] * centroids[:, s]).sum(0) / n.sum().clamp(min=1e-6)

    out = []
    for obj in include:
        s = _index(W.SHAPES, obj["class"], "class")
        out.append(bool(torch.round(counts[:, s].sum()) >= obj["count"]))
        if "color" in obj:
            out.append(bool(torch.round(cell(obj)[0]) >= obj["count"]))
        if "position" in obj:
            rel, j = obj["position"]
            (na, (xa, ya)), (nb, (xb, yb)) = cell(obj), cell(include[j])
            gap = {"left of": xb - xa, "right of": xa - xb, "above": yb - ya, "below": ya - yb}[rel]
            out.append(bool(na >= 0.5 and nb >= 0.5 and gap > W.MARGIN))
    for obj in exclude:
        out.append(bool(torch.round(counts[:, _index(W.SHAPES, obj["class"], "class")].sum()) < obj["count"]))
    return out


def _index(names: tuple, value: str, what: str) -> int:
    if value not in names:
        raise ValueError(f"geneval_testbed: {what} {value!r} is not in the testbed world ({list(names)}).")
    return names.index(value)


class GenEvalTestbedReward(Reward):
    """GenEval clause metadata judged by the testbed checker; ``strict`` or ``fraction``."""

    name = "geneval_testbed"
    differentiable = False
    batch_size = 256

    def __init__(self, checker: Any, output: str = "strict"):
        super().__init__()
        if output not in ("strict", "fraction"):
            raise ValueError(f"geneval_testbed output={output!r}; use 'strict' or 'fraction'.")
        self.checker, self.output = checker, output
        self.freeze()

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        if "include" not in metadata:
            raise ValueError(
                "geneval_testbed: no 'include' metadata column; load the prompts with "
                "rewards.geneval.load_geneval (GenEval's evaluation_metadata.jsonl format)."
            )
        include, exclude = metadata["include"], metadata.get("exclude") or [[] for _ in prompts]
        counts, cent = (t.detach().cpu() for t in self.checker.describe(images))
        scores = []
        for i in range(len(prompts)):
            v = clause_verdicts(counts[i], cent[i], include[i], exclude[i] or [])
            scores.append(float(all(v)) if self.output == "strict" else sum(v) / len(v))
        return torch.tensor(scores, dtype=torch.float32)


def load_geneval_testbed(path: Any = None, output: str = "strict", device: Any = None) -> GenEvalTestbedReward:
    from .testbed import _load

    return GenEvalTestbedReward(_load("checker", path, device), output)
