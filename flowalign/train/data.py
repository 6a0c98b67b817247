"""Prompt sources and the group sampler.

Prompt files are ``.txt`` (one prompt per line, blank lines and ``#`` comments skipped) or ``.jsonl``
(one object per line with a ``prompt`` key; every other key is a metadata column handed to rewards).

``group_batch`` reproduces the idea of flow_grpo's ``DistributedKRepeatSampler``: each iteration,
``m = world * per_rank / k`` distinct prompts are drawn with a seed shared by every rank, each is
repeated ``k`` times (a group), the ``world * per_rank`` slots are shuffled with the same seed and
rank ``r`` takes its contiguous slice, so members of a group are spread over ranks and every rank
computes the same global assignment without communication. Departure: the draw is a pure function
of (seed, iteration), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class PromptSet:
    prompts: list[str]  # [P]
    metadata: list[dict] = field(default_factory=list)  # [P] extra columns per prompt (may be empty dicts)

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
    return PromptSet(prompts, meta)


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
