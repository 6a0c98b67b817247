"""Within-prompt diversity of generated images: the mean pairwise feature distance inside each group.

``pixel_features(images, size)``: images [B, 3, H, W] in [0, 1] (a video's frames as channels)
average-pooled to ``size x size`` and flattened (GARDO's and DRAGON's features too). On the shapes
world this keeps what varies between samples of one prompt (where the objects are, their sizes and
colours) and drops pixel noise; pass your own features (e.g. a CLIP embedding) to
``pairwise_diversity`` for natural images.
``pairwise_diversity(features, group_ids)``: for every group of >= 2 rows, the mean Euclidean distance
over its unordered pairs; then the mean over groups (a group of one is skipped). A set with no group
of two rows is one ValueError.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pixel_features(images: Tensor, size: int = 16) -> Tensor:
    """[B, C, H, W] (or [B, F, C, H, W]: frames as channels) in [0, 1] -> [B, C (F) * size * size], detached."""
    x = images.detach().float()
    x = x.reshape(x.shape[0], -1, *x.shape[-2:])
    return F.adaptive_avg_pool2d(x, size).flatten(1)


def group_pair_means(features: Tensor, group_ids: Tensor) -> Tensor:
    """[G'] mean pairwise distance within each group that has >= 2 rows."""
    out = []
    for g in torch.unique(group_ids):
        f = features[group_ids == g]
        if len(f) < 2:
            continue
        d = torch.cdist(f[None].double(), f[None].double())[0]
        n = len(f)
        out.append(d.triu(1).sum() / (n * (n - 1) / 2))
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)


def pairwise_diversity(features: Tensor, group_ids: Tensor | list[int]) -> float:
    """Mean over groups of the mean pairwise L2 distance of the rows of a group -> float."""
    gids = torch.as_tensor(group_ids)
    per = group_pair_means(features, gids)
    if len(per) == 0:
        raise ValueError("pairwise_diversity needs at least one group with 2 or more samples (got only singletons).")
    return float(per.mean())
