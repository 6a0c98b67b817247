"""Prompt sources and the group sampler.

Prompt files are ``.txt`` (one prompt per line, blank lines and ``#`` comments skipped) or ``.jsonl``
(one object per line with a ``prompt`` key; every other key is a metadata column handed to rewards).
Editing families (``qwenimage_edit``, ``flux_kontext``) need a source image per prompt: the column
``image`` (``SOURCE_COLUMN``) holds a file path (relative to the .jsonl's folder), a PIL image or a
[3, H, W] tensor in [0, 1]; ``source_images`` loads a batch of them at the model's resolution (files
are resized when loaded; in-memory images must already have that size: the sources of one batch share
the output size). Rewards then get them as the metadata column ``source_images`` [B, 3, H, W].

``group_batch`` reproduces the idea of flow_grpo's ``DistributedKRepeatSampler``: each iteration,
``m = world * per_rank / k`` distinct prompts are drawn with a seed shared by every rank, each is
repeated ``k`` times (a group), the ``world * per_rank`` slots are shuffled with the same seed and
rank ``r`` takes its contiguous slice, so members of a group are spread over ranks and every rank
computes the same global assignment without communication. Departure: the draw is a pure function
of (seed, iteration), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class PromptSet:
    prompts: list[str]  # [P]
    metadata: list[dict] = field(default_factory=list)  # [P] extra columns per prompt (may be empty dicts)
    root: str | None = None  # folder that relative source-image paths start from (the .jsonl's folder)

    def __len__(self) -> int:
        return len(self.prompts)

    def columns(self, index: list[int]) -> dict[str, list]:
        """Metadata columns for the rows ``index`` (keys present in every row)."""
        rows = [self.metadata[i] for i in index] if self.metadata else [{} for _ in index]
        keys = set.intersection(*(set(r) for r in rows)) if rows else set()
        return {k: [r[k] for r in rows] for k in sorted(keys)}


def load_prompts(path: str | Path) -> PromptSet:
    """Read a .txt or .jsonl prompt file; one clear error if it is missing, unreadable or empty."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"prompt file {str(path)!r} is a folder; pass a .txt or .jsonl file inside it.")
    if not path.is_file():
        raise ValueError(
            f"prompt file {str(path)!r} does not exist; pass a .txt (one prompt per line) "
            f"or .jsonl (objects with a 'prompt' key) file."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"prompt file {str(path)!r} is not readable as UTF-8 text ({err}).") from None
    prompts, meta = [], []
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt = row.pop("prompt")
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                raise ValueError(
                    f"prompt file {str(path)!r} line {n} is not a JSON object with a 'prompt' key: {line[:80]!r}."
                ) from None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(
                    f"prompt file {str(path)!r} line {n}: 'prompt' must be non-empty text, got {prompt!r}."
                )
            prompts.append(prompt)
            meta.append(row)
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        meta = [{} for _ in prompts]
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} holds no prompts; add at least one line.")
    return PromptSet(prompts, meta, str(path.parent))


def check_group_arithmetic(per_rank: int, k: int, world: int) -> int:
    """Number of distinct prompts per iteration; one clear error if the batch does not divide."""
    total = per_rank * world
    if k < 1 or per_rank < 1:
        raise ValueError(f"group size k={k} and per-rank batch {per_rank} must be >= 1.")
    if total % k:
        raise ValueError(
            f"{world} rank(s) x {per_rank} images per rank = {total} images is not divisible "
            f"by the group size k={k}; choose a per-rank batch such that world * batch is a "
            f"multiple of k (e.g. per_rank={k // math.gcd(k, world)})."
        )
    return total // k


def group_batch(
    num_prompts: int, k: int, per_rank: int, world: int, rank: int, seed: int, iteration: int
) -> tuple[list[int], list[int]]:
    """(prompt indices, global group ids) of this rank's ``per_rank`` slots at ``iteration``.
    The group id of a slot is its position in the global list of m distinct prompts of the step."""
    m = check_group_arithmetic(per_rank, k, world)
    g = torch.Generator().manual_seed(seed * 1_000_003 + iteration)
    chosen = (
        torch.randperm(num_prompts, generator=g)[:m]
        if m <= num_prompts
        else torch.randint(num_prompts, (m,), generator=g)
    )
    slots = torch.arange(m).repeat_interleave(k)
    slots = slots[torch.randperm(m * k, generator=g)]
    mine = slots[rank * per_rank : (rank + 1) * per_rank]
    return chosen[mine].tolist(), (mine + iteration * m).tolist()


def _testbed_split(split: str) -> PromptSet:
    """The testbed's prompt splits. ``test``: the held-out prompts, interleaved across kinds (a prefix
    of the eval set is balanced). ``train``: every training prompt, each repeated so that the four
    kinds are drawn with TRAIN_KIND_WEIGHTS (uniform over prompts would be 77% position prompts)."""
    from ..testbed import world

    if split == "test":
        return PromptSet(world.eval_prompts(), [{} for _ in world.eval_prompts()])
    table = world.prompt_splits()[split]
    total = 20 * max(len(v) for v in table.values())  # list length; each kind gets weight x total rows
    prompts = [
        p for k in world.KINDS for p in table[k] * max(1, round(TRAIN_KIND_WEIGHTS[k] * total / max(1, len(table[k]))))
    ]
    return PromptSet(prompts, [{} for _ in prompts])


TRAIN_KIND_WEIGHTS = {"single": 0.1, "count": 0.3, "pair": 0.3, "position": 0.3}  # close to the eval mix


PROMPT_SOURCES = {  # named prompt sets usable wherever a prompt file is expected
    "testbed:train": lambda: _testbed_split("train"),
    "testbed:test": lambda: _testbed_split("test"),
}


def load_prompt_source(spec: str | Path) -> PromptSet:
    """A named set from ``PROMPT_SOURCES`` (e.g. 'testbed:train') or a .txt / .jsonl prompt file."""
    if isinstance(spec, str) and spec in PROMPT_SOURCES:
        return PROMPT_SOURCES[spec]()
    if isinstance(spec, str) and ":" in spec and spec.split(":")[0] == "testbed":
        raise ValueError(f"unknown prompt set {spec!r}; named sets are {sorted(PROMPT_SOURCES)}.")
    return load_prompts(spec)


def sample_seed(seed: int, iteration: int, index: int) -> int:
    """Seed of the generator of global sample ``index`` at ``iteration``: the noise of a sample does
    not depend on how samples are split over ranks or batches (a splitmix64-style hash)."""
    z = (seed * 0x9E3779B97F4A7C15 + iteration * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + 1) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return (z ^ (z >> 31)) % (1 << 63)


def generators(seed: int, iteration: int, indices: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per global sample index (``sample_seed``)."""
    return [torch.Generator(device).manual_seed(sample_seed(seed, iteration, i)) for i in indices]


# --- source images of the editing families ----------------------------------------------------------------
SOURCE_COLUMN = "image"  # the prompt column holding each prompt's source image (editing families)


def check_sources(prompts: PromptSet, family: str, where: str = "data.train") -> None:
    """Every prompt of ``prompts`` has a source image (a path that exists, a PIL image or a tensor): one
    ValueError naming the first prompt without one and how to give it."""
    example = '{"prompt": "make the circle red", "image": "sources/0.png"}'
    for i, row in enumerate(prompts.metadata or [{} for _ in prompts.prompts]):
        value = row.get(SOURCE_COLUMN)
        if value is None:
            raise ValueError(
                f"model family {family!r} edits a source image, but prompt {i} of {where} "
                f"({prompts.prompts[i]!r}) has no {SOURCE_COLUMN!r} column; give every prompt one in a .jsonl "
                f"prompt file, one object per line such as {example} (paths relative to the file)."
            )
        if isinstance(value, (str, Path)) and not _source_path(value, prompts.root).is_file():
            raise ValueError(
                f"the source image {str(value)!r} of prompt {i} of {where} does not exist "
                f"(looked for {_source_path(value, prompts.root)}); fix the {SOURCE_COLUMN!r} column."
            )


def _source_path(value: str | Path, root: str | None) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() or root is None else Path(root) / p


@functools.lru_cache(maxsize=256)
def _load_file(path: str, size: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"the source image {path!r} cannot be read as an image ({err}).") from None
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return _pil_tensor(im)


def _pil_tensor(im) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


def _source(value, size: int, root: str | None, what: str) -> torch.Tensor:
    """One source image -> [3, size, size] in [0, 1] (files resized; in-memory images must fit)."""
    if value is None:
        raise ValueError(f"{what} has no source image: give it one in the {SOURCE_COLUMN!r} column.")
    if isinstance(value, (str, Path)):
        return _load_file(str(_source_path(value, root)), size)
    if hasattr(value, "convert") and hasattr(value, "size"):
        value = _pil_tensor(value)
    if (
        not torch.is_tensor(value)
        or value.ndim not in (3, 4)
        or value.shape[-3] != 3
        or value.ndim == 4
        and len(value) != 1
    ):
        raise ValueError(
            f"the source image of {what} must be a file path, a PIL image or a [3, H, W] tensor in [0, 1], got "
            f"{tuple(value.shape) if torch.is_tensor(value) else type(value).__name__}."
        )
    value = value.reshape(value.shape[-3:]).float()
    if tuple(value.shape[-2:]) != (size, size):
        h, w = value.shape[-2:]
        raise ValueError(
            f"the source image of {what} is {h}x{w} (height x width) but model.resolution={size}: the sources of a "
            f"batch share the output size; resize it to {size}x{size} (files in the {SOURCE_COLUMN!r} column are "
            f"resized when loaded) or set model.resolution."
        )
    return value


def source_images(prompts: PromptSet, index: list[int], size: int) -> torch.Tensor:
    """The source images of rows ``index`` as [B, 3, size, size] in [0, 1]."""
    meta = prompts.metadata or [{} for _ in prompts.prompts]
    return torch.stack(
        [_source(meta[i].get(SOURCE_COLUMN), size, prompts.root, f"prompt {i} ({prompts.prompts[i]!r})") for i in index]
    )
