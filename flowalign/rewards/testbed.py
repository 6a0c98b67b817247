"""The shapes-world testbed's scorers (``flowalign.testbed.scorers``) as rewards.

* ``compositional`` — the GenEval analogue: the checker judges every clause of the prompt (colour,
  shape, count per object group, relation). ``output="fraction"`` (default): fraction of clauses
  satisfied (hard verdicts, not differentiable); ``"strict"``: 1 if every clause holds (GenEval's
  strict accuracy, Flow-GRPO's ``only_strict``); ``"soft"``: mean soft clause probability
  (differentiable). ``details()`` returns all three (``all_correct`` included) and the per-clause
  verdicts, for evaluation tables.
* ``testbed_aesthetic`` — the hackable aesthetic proxy, a score in (0, 10); differentiable.
* ``testbed_artifact`` — the artifact detector: ``output="prob"`` (default) r = 1 - P(artifact) in
  [0, 1] (as the artifact reward); ``"logodds"``: r = -logit = log P(clean) / P(artifact).
Prompts outside the testbed grammar are one clear ValueError (``world.parse_prompt``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Reward, weights_error

HOW = (
    "the testbed scorers ship in assets/testbed/scorers (or $FLOWALIGN_TESTBED_DIR); rebuild them with "
    "`python scripts/train_testbed.py`, or pass path=ASSETS_DIR."
)


def _load(kind: str, path, device) -> nn.Module:
    from ..testbed.scorers import load_scorer

    try:
        return load_scorer(kind, path, device or "cpu")
    except (ValueError, OSError) as e:
        raise weights_error(
            f"testbed {kind}", [f"scorers/{kind}.safetensors", f"scorers/{kind}.json"], HOW, str(e)
        ) from e


class CompositionalReward(Reward):
    name = "compositional"
    differentiable = False
    batch_size = 256

    def __init__(self, checker: nn.Module, output: str = "fraction"):
        super().__init__()
        if output not in ("fraction", "strict", "soft"):
            raise ValueError(f"compositional output={output!r}; use 'fraction', 'strict' or 'soft'.")
        self.checker, self.output = checker, output
        self.differentiable = output == "soft"
        self.freeze()

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        out = self.checker(images, prompts)
        if self.output == "soft":
            return out.soft_fraction
        return out.all_correct.float() if self.output == "strict" else out.fraction

    @torch.no_grad()
    def details(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        """fraction [B], all_correct [B] bool, soft_fraction [B], clause correct / mask [B, K]."""
        out = self.checker(images.to(self.device), list(prompts))
        return {
            "fraction": out.fraction,
            "all_correct": out.all_correct,
            "soft_fraction": out.soft_fraction,
            "clause_correct": out.correct,
            "clause_mask": out.mask,
        }


class AestheticProxyReward(Reward):
    name = "testbed_aesthetic"
    differentiable = True
    batch_size = 256

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.freeze()

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        return self.model(images)


class ArtifactDetectorReward(Reward):
    name = "testbed_artifact"
    differentiable = True
    batch_size = 256

    def __init__(self, detector: nn.Module, output: str = "prob"):
        super().__init__()
        if output not in ("prob", "logodds"):
            raise ValueError(f"testbed_artifact output={output!r}; use 'prob' (1 - P(artifact)) or 'logodds'.")
        self.detector, self.output = detector, output
        self.freeze()

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        logit = self.detector.logits(images)
        return torch.sigmoid(-logit) if self.output == "prob" else -logit


def load_compositional(path=None, output: str = "fraction", device=None) -> CompositionalReward:
    return CompositionalReward(_load("checker", path, device), output)


def load_testbed_aesthetic(path=None, device=None) -> AestheticProxyReward:
    return AestheticProxyReward(_load("aesthetic", path, device))


def load_testbed_artifact(path=None, output: str = "prob", device=None) -> ArtifactDetectorReward:
    return ArtifactDetectorReward(_load("artifact", path, device), output)
