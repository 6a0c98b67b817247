"""The testbed's three scorers: compositional checker, hackable aesthetic proxy, artifact detector.

All three are small CNNs taking images [B, 3, H, W] float in [0, 1] (resized to 32x32 inside,
differentiably) and are differentiable w.r.t. the pixels. They are trained on fresh procedural
images by ``flowalign.testbed.train`` and saved as ``<name>.safetensors`` + ``<name>.json``.

* ``Checker`` (the GenEval analogue) is a counting-by-density network: at every point of a 16x16
  grid a softmax over 15 colour x shape cells + background gives, per cell, a density map whose
  sum is the number of such objects and whose centre of mass is their mean position. It is
  trained with soft-target cross-entropy against unit-mass Gaussian blobs at the object centres
  (the softmax keeps densities in [0, 1] and, unlike a softplus/ReLU head, cannot die), on clean
  and imperfectly drawn scenes (``world.distort``, VAE round trips with latent noise) so that
  generated images are judged fairly. Clause verdicts follow ``world.judge``: colour present (its
  densities total >= 0.5 over shapes), shape present, exact count (rounded), relation between
  centroids. Soft clause probabilities (differentiable) come from a Gaussian likelihood of the
  integer counts around the density sums.
* ``AestheticProxy`` regresses ``corrupt.aesthetic_target`` (likes saturation, contrast, edge
  energy): a smooth score a policy can raise with noise, checkerboards or over-saturation.
* ``ArtifactDetector`` outputs P(artifact) for clean vs corrupted (``corrupt.CORRUPTIONS``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import world as W
from .paths import assets_dir

GRID = 16  # density-map resolution (2 px per cell at 32x32)
COUNT_TAU = 0.35  # width of the Gaussian count likelihood behind the soft clause probabilities
POSITION_TAU = 1.0  # px: softness of the relation clause


def to_input(images: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, 3, 32, 32] in [-1, 1] (differentiable resize)."""
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a tensor [B, 3, H, W] float in [0, 1], got {shape}")
    x = images.float()
    if x.shape[-2:] != (W.IMAGE_SIZE, W.IMAGE_SIZE):
        x = F.interpolate(x, size=(W.IMAGE_SIZE, W.IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x * 2 - 1


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1, norm: bool = False) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation)
    return [conv, nn.GroupNorm(8, cout), nn.SiLU()] if norm else [conv, nn.SiLU()]


def count_distribution(n: Tensor) -> Tensor:
    """Soft count n [...] -> probabilities [..., 5] of 0, 1, 2, 3, 4+ objects (Gaussian in n - k)."""
    ks = torch.arange(5, dtype=n.dtype, device=n.device)
    return torch.softmax(-((n[..., None] - ks) ** 2) / (2 * COUNT_TAU**2), -1)


@dataclass
class CheckerOut:
    """Per-clause verdicts in the order of ``PromptLabels.clauses()`` (padded to MAX_CLAUSES)."""

    clause_prob: Tensor  # [B, K] float: soft probability that each clause holds (differentiable)
    correct: Tensor  # [B, K] bool: hard verdict (argmax counts, centroid comparison)
    mask: Tensor  # [B, K] bool: the clause exists for that prompt

    @property
    def fraction(self) -> Tensor:
        """[B] fraction of the prompt's clauses satisfied (hard)."""
        return (self.correct & self.mask).sum(1).float() / self.mask.sum(1).float()

    @property
    def soft_fraction(self) -> Tensor:
        """[B] mean soft clause probability (differentiable)."""
        return (self.clause_prob * self.mask).sum(1) / self.mask.sum(1).float()

    @property
    def all_correct(self) -> Tensor:
        """[B] bool: every clause satisfied."""
        return (self.correct | ~self.mask).all(1)


class Checker(nn.Module):
    name = "checker"

    def __init__(self, width: int = 24, width2: int = 48):
        super().__init__()
        self.config = {"width": width, "width2": width2}
        cells = len(W.COLOR_NAMES) * len(W.SHAPES)
        self.net = nn.Sequential(
            *_conv(3, width, norm=True),
            *_conv(width, width2, stride=2, norm=True),
            *_conv(width2, width2, norm=True),
            *_conv(width2, width2, dilation=2, norm=True),
            *_conv(width2, width2, norm=True),
            nn.Conv2d(width2, cells + 1, 1),
        )
        with torch.no_grad():  # start from "background everywhere"
            self.net[-1].bias[-1] = 6.0
        coords = (torch.arange(GRID, dtype=torch.float32) + 0.5) * (W.IMAGE_SIZE / GRID)
        self.register_buffer("coords", coords, persistent=False)

    def log_density(self, images: Tensor) -> Tensor:
        """Log-softmax over the 15 cells + background (last channel): [B, 16, 16, 16]."""
        return F.log_softmax(self.net(to_input(images)), 1)

    def density(self, images: Tensor) -> Tensor:
        """Density maps [B, C, S, 16, 16] in [0, 1]; their sums are object counts."""
        d = self.log_density(images)[:, :-1].exp()
        return d.view(d.shape[0], len(W.COLOR_NAMES), len(W.SHAPES), GRID, GRID)

    def describe(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Soft counts [B, C, S] and centroids [B, C, S, 2] (x, y in px of a 32x32 image)."""
        d = self.density(images)
        n = d.sum((-1, -2))
        denom = n.clamp(min=1e-6)
        cx = (d.sum(-2) * self.coords).sum(-1) / denom
        cy = (d.sum(-1) * self.coords).sum(-1) / denom
        return n, torch.stack([cx, cy], -1)

    def forward(self, images: Tensor, labels: list[W.PromptLabels] | list[str]) -> CheckerOut:
        labels = [W.parse_prompt(p) if isinstance(p, str) else p for p in labels]
        if len(labels) != images.shape[0]:
            raise ValueError(f"checker got {images.shape[0]} images but {len(labels)} prompts")
        n, cent = self.describe(images)
        correct, mask = W.judge(n.detach().cpu(), cent.detach().cpu(), labels)
        p = count_distribution(n)  # [B, C, S, 5]
        present = 1 - p[..., 0]
        color_present = 1 - count_distribution(n.sum(2))[..., 0]  # [B, C]
        shape_present = 1 - count_distribution(n.sum(1))[..., 0]  # [B, S]
        rows = []
        for i, lab in enumerate(labels):
            row = []
            for kind, gi in lab.clauses():
                if kind == "position":
                    (ca, sa), (cb, sb) = [(W.COLOR_NAMES.index(g.color), W.SHAPES.index(g.shape)) for g in lab.groups]
                    (xa, ya), (xb, yb) = cent[i, ca, sa], cent[i, cb, sb]
                    gap = {"left of": xb - xa, "right of": xa - xb, "above": yb - ya, "below": ya - yb}[
                        lab.relation
                    ] - W.MARGIN
                    row.append(present[i, ca, sa] * present[i, cb, sb] * torch.sigmoid(gap / POSITION_TAU))
                    continue
                g = lab.groups[gi]
                c, s = W.COLOR_NAMES.index(g.color), W.SHAPES.index(g.shape)
                row.append(
                    {"color": color_present[i, c], "shape": shape_present[i, s], "count": p[i, c, s, g.count]}[kind]
                )
            row += [n.new_zeros(())] * (W.MAX_CLAUSES - len(row))
            rows.append(torch.stack(row))
        return CheckerOut(torch.stack(rows), correct.to(n.device), mask.to(n.device))


class AestheticProxy(nn.Module):
    """Score in (0, 10) regressing ``corrupt.aesthetic_target``; pooled mean and mean-square features."""

    name = "aesthetic"

    def __init__(self, width: int = 16, width2: int = 32):
        super().__init__()
        self.config = {"width": width, "width2": width2}
        self.features = nn.Sequential(*_conv(3, width), *_conv(width, width2, stride=2), *_conv(width2, width2))
        self.head = nn.Sequential(nn.Linear(2 * width2, 64), nn.SiLU(), nn.Linear(64, 1))

    def forward(self, images: Tensor) -> Tensor:
        f = self.features(to_input(images))
        pooled = torch.cat([f.mean((2, 3)), f.square().mean((2, 3))], 1)
        return 10 * torch.sigmoid(self.head(pooled).squeeze(1))


class ArtifactDetector(nn.Module):
    """P(artifact) [B] for an image (clean procedural / generated vs corrupted)."""

    name = "artifact"

    def __init__(self, width: int = 24, width2: int = 48):
        super().__init__()
        self.config = {"width": width, "width2": width2}
        self.features = nn.Sequential(
            *_conv(3, width, norm=True),
            *_conv(width, width2, stride=2, norm=True),
            *_conv(width2, width2, norm=True),
            *_conv(width2, width2, stride=2, norm=True),
        )
        self.head = nn.Linear(2 * width2, 1)

    def logits(self, images: Tensor) -> Tensor:
        f = self.features(to_input(images))
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)).squeeze(1)

    def forward(self, images: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(images))


SCORERS = {"checker": Checker, "aesthetic": AestheticProxy, "artifact": ArtifactDetector}


def save_scorer(model: nn.Module, directory: str | Path) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / f"{model.name}.safetensors"))
    (directory / f"{model.name}.json").write_text(json.dumps(model.config, indent=1))


def load_scorer(name: str, directory: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a saved scorer (``checker`` | ``aesthetic`` | ``artifact``) in eval mode, frozen."""
    from safetensors.torch import load_file

    if name not in SCORERS:
        raise ValueError(f"unknown testbed scorer {name!r}; choose one of {sorted(SCORERS)}")
    root = assets_dir(directory, f"scorers/{name}.safetensors") / "scorers"
    model = SCORERS[name](**json.loads((root / f"{name}.json").read_text()))
    model.load_state_dict(load_file(str(root / f"{name}.safetensors")))
    model.requires_grad_(False)
    return model.eval().to(device)


def load_checker(directory: str | Path | None = None, device: str | torch.device = "cpu") -> Checker:
    return load_scorer("checker", directory, device)


def load_aesthetic(directory: str | Path | None = None, device: str | torch.device = "cpu") -> AestheticProxy:
    return load_scorer("aesthetic", directory, device)


def load_artifact_detector(directory: str | Path | None = None, device: str | torch.device = "cpu") -> ArtifactDetector:
    return load_scorer("artifact", directory, device)
