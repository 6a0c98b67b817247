"""Artifact reward: a small head on frozen image features that predicts "this image has artifacts".

After "Understanding Reward Hacking in Text-to-Image RL" (arXiv 2601.03468, ArtifactReward), which
asks a fine-tuned VLM "does this image contain artifacts?" and uses r = p(No) / (p(Yes) + p(No)).
Departure: instead of a VLM we train a logistic / one-hidden-layer head on frozen open_clip image
features from a folder of labelled clean / artifact images (``scripts/train_artifact_reward.py``),
which is cheap enough to run every step. Outputs:
* ``output="prob"`` (default): r = 1 - p(artifact) = sigmoid(-logit), in [0, 1], higher = cleaner
  (the paper's r_art);
* ``output="logodds"``: r = -logit = log p(clean) / p(artifact), unbounded (better gradients when the
  detector saturates).
The head file is safetensors with metadata (backbone arch, feature size, hidden size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Reward, resolve_weights, weights_error
from .clip import OpenClipFeatures, load_open_clip

FORMAT = "flowalign-artifact-head-v1"
HOW = (
    "train a head with `python scripts/train_artifact_reward.py --data DIR --clip WEIGHTS --out head.safetensors` "
    "(DIR/clean/*.png and DIR/artifact/*.png) and pass load_reward('artifact', path='head.safetensors', "
    "clip=WEIGHTS) with the same CLIP weights used for training."
)


class ArtifactHead(nn.Module):
    """features [B, D] -> artifact logit [B]; features are standardised with the training set's
    per-dimension mean / std (buffers, saved with the head); ``hidden=0`` is logistic regression."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.register_buffer("shift", torch.zeros(dim))  # [D]
        self.register_buffer("scale", torch.ones(dim))  # [D]
        self.net = (
            nn.Linear(dim, 1) if hidden == 0 else nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        )

    def forward(self, feats: Tensor) -> Tensor:
        return self.net((feats - self.shift) / self.scale).squeeze(-1)


class ArtifactReward(Reward):
    name = "artifact"
    differentiable = True

    def __init__(self, features: nn.Module, head: ArtifactHead, output: str = "prob", batch_size: int = 32):
        super().__init__()
        if output not in ("prob", "logodds"):
            raise ValueError(f"artifact output={output!r}; use 'prob' (1 - p_artifact) or 'logodds'.")
        self.features, self.head, self.output, self.batch_size = features, head, output, batch_size
        self.freeze()

    def logits(self, images: Tensor) -> Tensor:  # [B] artifact logit
        return self.head(self.features.image(images).to(self.dtype)).float()

    def score(self, images: Tensor, prompts: list[str], **metadata) -> Tensor:
        logit = self.logits(images)
        return torch.sigmoid(-logit) if self.output == "prob" else -logit


# --- training (used by scripts/train_artifact_reward.py) ------------------------------------------
@dataclass
class HeadStats:
    train_acc: float
    val_acc: float
    val_auc: float
    train_loss: float


@torch.no_grad()
def extract_features(features: OpenClipFeatures, images: Tensor, batch_size: int = 32) -> Tensor:
    return torch.cat([features.image(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def auc(scores: Tensor, labels: Tensor) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def train_head(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    hidden: int = 256,
    epochs: int = 200,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> tuple[ArtifactHead, HeadStats]:
    """Full-batch AdamW with class-balanced BCE on fixed features; labels 1 = artifact."""
    torch.manual_seed(seed)
    head = ArtifactHead(train_x.shape[1], hidden)
    head.shift.copy_(train_x.mean(0))
    head.scale.copy_(train_x.std(0).clamp_min(1e-6) if len(train_x) > 1 else torch.ones(train_x.shape[1]))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    pos = train_y.mean().clamp(1e-3, 1 - 1e-3)
    weight = torch.where(train_y > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        loss = F.binary_cross_entropy_with_logits(head(train_x), train_y, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        tr, va = head(train_x), head(val_x)

    def acc(z: torch.Tensor, y: torch.Tensor) -> float:
        return float(((z > 0).float() == y).float().mean()) if len(y) else float("nan")

    return head, HeadStats(acc(tr, train_y), acc(va, val_y), auc(va, val_y), float(loss.detach()))


def save_head(head: ArtifactHead, path: str, arch: str, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    meta = {
        "format": FORMAT,
        "arch": arch,
        "dim": str(head.dim),
        "hidden": str(head.hidden),
        "extra": json.dumps(extra or {}),
    }
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, path, metadata=meta)


def load_head(path: str) -> tuple[ArtifactHead, dict]:
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open handles are not iterable)
    except Exception as e:
        raise weights_error(
            "artifact",
            ["head.safetensors (written by train_artifact_reward.py)"],
            HOW,
            f"cannot read {path} ({type(e).__name__}: {str(e)[:200]}).",
        ) from e
    if meta.get("format") != FORMAT:
        raise weights_error(
            "artifact",
            ["head.safetensors (written by train_artifact_reward.py)"],
            HOW,
            f"{path} is not an artifact head (metadata format={meta.get('format')!r}).",
        )
    head = ArtifactHead(int(meta["dim"]), int(meta["hidden"]))
    head.load_state_dict(state)
    return head.eval(), meta


def load_artifact(
    path=None, clip=None, arch: str | None = None, output: str = "prob", device=None, dtype=None
) -> ArtifactReward:
    """``path``: the head (.safetensors or a directory with ``artifact_head.safetensors``);
    ``clip``: the open_clip weights the head was trained on; ``arch`` defaults to the head's."""
    import open_clip

    files = resolve_weights("artifact", path, ["artifact_head.safetensors"], HOW)
    head, meta = load_head(files["artifact_head.safetensors"])
    arch = arch or meta["arch"]
    model = load_open_clip("artifact", arch, clip, param="clip")
    features = OpenClipFeatures(model, open_clip.get_tokenizer(arch))
    with torch.no_grad():
        dim = features.image(torch.zeros(1, 3, features.size, features.size)).shape[1]
    if dim != head.dim:
        raise weights_error(
            "artifact",
            ["artifact_head.safetensors", f"open_clip {arch} weights"],
            HOW,
            f"the head expects {head.dim}-d features but {arch} gives {dim}-d.",
        )
    return ArtifactReward(features, head, output=output).to(device=device, dtype=dtype)
