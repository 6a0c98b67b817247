"""The shapes world: a seeded procedural generator of 32x32 RGB images with captions from a grammar.

Grammar (every prompt is exactly one of four kinds; ``parse_prompt`` inverts it)::

    single    "a red circle"
    count     "two blue squares" | "three green triangles"
    pair      "a red circle and a blue square"
    position  "a green triangle left of a yellow circle"   (left of | right of | above | below)

Colours: red, green, blue, yellow, purple. Shapes: circle, square, triangle. Objects are rendered
(``testbed/render.py``) as anti-aliased signed-distance shapes on a plain dark background, never overlapping; a position
scene puts its two objects >= 10 px apart along the relation's axis and at most 0.6 times that
across it, so every caption is unambiguous. The structured labels of a
prompt are a ``PromptLabels``; its *clauses* (what the GenEval-like checker verifies) are, per
object group, "colour present", "shape present", "exact count of that colour+shape", and for a
position prompt one "relation holds" clause. ``judge`` evaluates clauses from a count table and
centroids, so ground truth (from a ``Scene``) and the checker's verdicts use the same rules.

Prompt splits: every prompt of the grammar is enumerated and a seeded part of each kind is held
out as the ``test`` split (evaluation only): 20% of single and count prompts, 40% of pair and 15%
of position prompts = 3 + 6 + 84 + 126 = 219 prompts, so that no kind dominates the eval set as
the 840 position prompts would at a uniform rate.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

IMAGE_SIZE = 32
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.16, 0.14),
    "green": (0.16, 0.75, 0.22),
    "blue": (0.18, 0.33, 0.95),
    "yellow": (0.96, 0.86, 0.18),
    "purple": (0.62, 0.22, 0.86),
}
COLOR_NAMES = tuple(COLORS)
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (0.10, 0.11, 0.13)
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
RELATIONS = ("left of", "right of", "above", "below")
KINDS = ("single", "count", "pair", "position")
MAX_CLAUSES = 7  # position prompt: 2 groups x (colour, shape, count) + relation
MARGIN = 2.0  # px: "A left of B" holds when x_A < x_B - MARGIN (centroids)
BOUND = {"circle": 1.0, "square": 1.25, "triangle": 1.15}  # bounding radius / size
HELDOUT_FRACTION = {"single": 0.2, "count": 0.2, "pair": 0.4, "position": 0.15}
SPLIT_SEED = 0


@dataclass(frozen=True)
class Group:
    color: str
    shape: str
    count: int = 1


@dataclass(frozen=True)
class PromptLabels:
    kind: str  # one of KINDS
    groups: tuple[Group, ...]  # 1 group (single/count) or 2 (pair/position)
    relation: str | None = None  # position only: groups[0] <relation> groups[1]

    def clauses(self) -> list[tuple[str, int]]:
        """[(clause type, group index)]; the relation clause has group index -1."""
        out = [(t, i) for i in range(len(self.groups)) for t in ("color", "shape", "count")]
        return out + ([("position", -1)] if self.relation else [])


@dataclass
class Obj:
    color: str
    shape: str
    x: float  # centre, px from the left edge
    y: float  # centre, px from the top edge
    size: float  # px: circle radius, square half side / 0.88, triangle circumradius / 1.15
    rgb: tuple[float, float, float]
    angle: float = 0.0  # rad; distortions only (``distort``): captions' scenes are upright
    aspect: float = 1.0  # x stretch (y shrinks by the same factor); distortions only


@dataclass
class Scene:
    objects: list[Obj]
    prompt: str | None = None  # the caption the scene was rendered for, if any
    wobble: np.ndarray | None = None  # [6, 6] px: low-frequency boundary noise (``distort`` only)


def _plural(shape: str) -> str:
    return shape + "s"


def format_prompt(labels: PromptLabels) -> str:
    def phrase(g: Group) -> str:
        return f"{COUNT_WORDS[g.count]} {g.color} {_plural(g.shape) if g.count > 1 else g.shape}"

    if labels.kind in ("single", "count"):
        return phrase(labels.groups[0])
    joint = "and" if labels.kind == "pair" else labels.relation
    return f"{phrase(labels.groups[0])} {joint} {phrase(labels.groups[1])}"


_OBJ = r"(a|two|three) (" + "|".join(COLOR_NAMES) + r") (" + "|".join(s + "s?" for s in SHAPES) + r")"
_PROMPT_RE = re.compile(rf"^{_OBJ}(?: (and|left of|right of|above|below) {_OBJ})?$")


def parse_prompt(prompt: str) -> PromptLabels:
    """Invert the grammar: "two red circles" -> PromptLabels(kind="count", ...)."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    text = " ".join(prompt.lower().strip().rstrip(".").split())
    m = _PROMPT_RE.match(text)
    hint = (
        "; the testbed grammar is e.g. 'a red circle', 'two blue squares', 'a red circle and a "
        f"blue square', 'a green triangle left of a yellow circle' (colours {list(COLOR_NAMES)}, "
        f"shapes {list(SHAPES)}, relations {list(RELATIONS)})"
    )
    if m is None:
        raise ValueError(f"prompt {prompt!r} is outside the shapes-world grammar{hint}")
    groups = []
    for word, color, noun in (m.group(1, 2, 3), m.group(5, 6, 7)):
        if word is None:
            continue
        count = {"a": 1, "two": 2, "three": 3}[word]
        if noun.endswith("s") != (count > 1):
            raise ValueError(f"prompt {prompt!r}: {word!r} does not agree with {noun!r}{hint}")
        groups.append(Group(color, noun.rstrip("s"), count))
    joint = m.group(4)
    if joint is None:
        return PromptLabels("count" if groups[0].count > 1 else "single", tuple(groups))
    if any(g.count > 1 for g in groups):
        raise ValueError(f"prompt {prompt!r}: two-object prompts take one object each{hint}")
    if groups[0].color == groups[1].color and groups[0].shape == groups[1].shape:
        raise ValueError(f"prompt {prompt!r}: the two objects must differ{hint}")
    if joint == "and":
        return PromptLabels("pair", tuple(groups))
    return PromptLabels("position", tuple(groups), joint)


def all_prompts() -> dict[str, list[str]]:
    """Every prompt of the grammar, by kind (15 single, 30 count, 210 pair, 840 position)."""
    cells = [Group(c, s) for c in COLOR_NAMES for s in SHAPES]
    out: dict[str, list[str]] = {k: [] for k in KINDS}
    out["single"] = [format_prompt(PromptLabels("single", (g,))) for g in cells]
    out["count"] = [format_prompt(PromptLabels("count", (Group(g.color, g.shape, n),))) for n in (2, 3) for g in cells]
    pairs = list(itertools.permutations(cells, 2))
    out["pair"] = [format_prompt(PromptLabels("pair", p)) for p in pairs]
    out["position"] = [format_prompt(PromptLabels("position", p, r)) for r in RELATIONS for p in pairs]
    return out


def prompt_splits() -> dict[str, dict[str, list[str]]]:
    """{"train" | "test": {kind: prompts}}; ``test`` holds ``HELDOUT_FRACTION`` of each kind."""
    rng = np.random.default_rng(SPLIT_SEED)
    splits: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for kind, prompts in all_prompts().items():
        n_test = int(round(HELDOUT_FRACTION[kind] * len(prompts)))
        order = rng.permutation(len(prompts))
        test = set(order[:n_test].tolist())
        splits["test"][kind] = [p for i, p in enumerate(prompts) if i in test]
        splits["train"][kind] = [p for i, p in enumerate(prompts) if i not in test]
    return splits


def eval_prompts(n: int | None = None) -> list[str]:
    """Held-out prompts interleaved across kinds (so a prefix is balanced); all 219 if n is None."""
    test = prompt_splits()["test"]
    rng = np.random.default_rng(SPLIT_SEED + 1)
    queues = [[test[k][i] for i in rng.permutation(len(test[k]))] for k in KINDS if test[k]]
    out: list[str] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out if n is None else out[:n]


# ---------------------------------------------------------------- scenes
def _jitter_rgb(color: str, rng: np.random.Generator) -> tuple[float, float, float]:
    base = np.asarray(COLORS[color]) * rng.uniform(0.88, 1.06) + rng.uniform(-0.04, 0.04, 3)
    return tuple(float(v) for v in np.clip(base, 0.0, 1.0))


_DIRECTION = {"left of": (1.0, 0.0), "right of": (-1.0, 0.0), "above": (0.0, 1.0), "below": (0.0, -1.0)}


def _place(
    specs: list[tuple[str, str]], rng: np.random.Generator, relation: str | None = None, tries: int = 200
) -> list[Obj]:
    """Sequential non-overlapping placement (bounding circles >= 1 px apart), shrinking sizes if
    crowded. With a relation, the second object is proposed at an offset from the first: >= 10 px
    along the relation's axis (towards "B" in "A left of B") and at most 0.6 times that across it."""
    lo, hi = 4.0, 6.0
    for attempt in range(tries):
        shrink = 1.0 - 0.35 * attempt / tries
        objs: list[Obj] = []
        for color, shape in specs:
            size = float(rng.uniform(lo, hi) * shrink)
            b = BOUND[shape] * size
            for _ in range(30):
                if relation is not None and objs:
                    (ux, uy), par = _DIRECTION[relation], rng.uniform(10.0, 24.0)
                    perp = rng.uniform(-0.6, 0.6) * par
                    x, y = objs[0].x + ux * par - uy * perp, objs[0].y + uy * par + ux * perp
                    if not (b + 0.5 <= x <= IMAGE_SIZE - b - 0.5 and b + 0.5 <= y <= IMAGE_SIZE - b - 0.5):
                        continue
                else:
                    x, y = (float(v) for v in rng.uniform(b + 0.5, IMAGE_SIZE - b - 0.5, 2))
                if all(np.hypot(x - o.x, y - o.y) >= b + BOUND[o.shape] * o.size + 1 for o in objs):
                    objs.append(Obj(color, shape, float(x), float(y), size, _jitter_rgb(color, rng)))
                    break
            else:
                break
        if len(objs) == len(specs):
            return objs
    raise RuntimeError(f"could not place {specs} with relation {relation!r}")


def scene_for(labels: PromptLabels, rng: np.random.Generator) -> Scene:
    """A random scene that satisfies every clause of ``labels`` and holds nothing else."""
    specs = [(g.color, g.shape) for g in labels.groups for _ in range(g.count)]
    return Scene(_place(specs, rng, labels.relation), format_prompt(labels))


def random_scene(rng: np.random.Generator, max_objects: int = 5) -> Scene:
    """0..max_objects objects with independent colours/shapes, at most 3 of any colour+shape."""
    while True:
        n = int(rng.integers(0, max_objects + 1))
        specs = [(COLOR_NAMES[rng.integers(len(COLOR_NAMES))], SHAPES[rng.integers(len(SHAPES))]) for _ in range(n)]
        if max((specs.count(s) for s in specs), default=0) <= 3:
            return Scene(_place(specs, rng))


def sample_prompt(
    rng: np.random.Generator, split: str = "train", weights: tuple[float, ...] = (0.15, 0.2, 0.25, 0.4)
) -> str:
    """A prompt of ``split``: kind drawn with ``weights`` (single, count, pair, position)."""
    table = prompt_splits()[split] if split not in _SPLIT_CACHE else _SPLIT_CACHE[split]
    _SPLIT_CACHE[split] = table
    kinds = [k for k in KINDS if table[k]]
    w = np.asarray([weights[KINDS.index(k)] for k in kinds])
    kind = kinds[rng.choice(len(kinds), p=w / w.sum())]
    return table[kind][rng.integers(len(table[kind]))]


_SPLIT_CACHE: dict[str, dict[str, list[str]]] = {}


# ---------------------------------------------------------------- clauses
def scene_table(scenes: list[Scene]) -> tuple[Tensor, Tensor]:
    """Ground truth: counts [B, C, S] (long) and centroids [B, C, S, 2] (x, y in px; 0 if absent)."""
    counts = torch.zeros(len(scenes), len(COLOR_NAMES), len(SHAPES), dtype=torch.long)
    cent = torch.zeros(len(scenes), len(COLOR_NAMES), len(SHAPES), 2)
    for i, s in enumerate(scenes):
        for o in s.objects:
            c, sh = COLOR_NAMES.index(o.color), SHAPES.index(o.shape)
            counts[i, c, sh] += 1
            cent[i, c, sh] += torch.tensor([o.x, o.y])
    return counts, cent / counts.clamp(min=1).unsqueeze(-1)


def judge(counts: Tensor, centroids: Tensor, labels: list[PromptLabels]) -> tuple[Tensor, Tensor]:
    """Clause verdicts from a (possibly fractional) count table [B, C, S] and centroids [B, C, S, 2].

    colour: the colour's objects total >= 0.5 (any shape); shape: the shape's objects total >= 0.5
    (any colour); count: round(count of colour+shape) == n; position: both objects present
    (count >= 0.5) and their centroids (px) in the stated order by more than ``MARGIN``. Integer
    ground-truth counts give the obvious verdicts; the checker's soft counts are judged the same
    way, so an object whose shape is ambiguous still counts towards its colour.
    Returns ``correct`` [B, MAX_CLAUSES] bool and ``mask`` [B, MAX_CLAUSES] bool (clause exists),
    in the order of ``PromptLabels.clauses()``.
    """
    counts = counts.float()
    correct = torch.zeros(len(labels), MAX_CLAUSES, dtype=torch.bool)
    mask = torch.zeros_like(correct)
    for i, lab in enumerate(labels):
        for j, (kind, gi) in enumerate(lab.clauses()):
            mask[i, j] = True
            if kind == "position":
                (ca, sa), (cb, sb) = [(COLOR_NAMES.index(g.color), SHAPES.index(g.shape)) for g in lab.groups]
                if counts[i, ca, sa] < 0.5 or counts[i, cb, sb] < 0.5:
                    continue
                (xa, ya), (xb, yb) = centroids[i, ca, sa].tolist(), centroids[i, cb, sb].tolist()
                correct[i, j] = {
                    "left of": xa < xb - MARGIN,
                    "right of": xa > xb + MARGIN,
                    "above": ya < yb - MARGIN,
                    "below": ya > yb + MARGIN,
                }[lab.relation]
                continue
            g = lab.groups[gi]
            c, s = COLOR_NAMES.index(g.color), SHAPES.index(g.shape)
            correct[i, j] = bool(
                {
                    "color": counts[i, c].sum() >= 0.5,
                    "shape": counts[i, :, s].sum() >= 0.5,
                    "count": torch.round(counts[i, c, s]) == g.count,
                }[kind]
            )
    return correct, mask
