"""Within-prompt diversity (flowalign/rewards/diversity.py), by hand."""

import pytest
import torch

from flowalign.rewards.diversity import pairwise_diversity, pixel_features


def test_pairwise_diversity_by_hand():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1.0, 1.0], [1.0, 2.0], [7.0, 7.0]])
    # group 0 = rows 0-2: |r0 - r1| = 5, |r0 - r2| = 0, |r1 - r2| = 5 -> mean over 3 pairs 10 / 3
    # group 1 = rows 3-4: |(1, 1) - (1, 2)| = 1; group 2 = row 5 alone: skipped -> (10/3 + 1) / 2 = 2.1667
    assert pairwise_diversity(f, [0, 0, 0, 1, 1, 2]) == pytest.approx((10 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="at least one group with 2 or more samples"):
        pairwise_diversity(f[:2], [0, 1])


def test_pixel_features_pool_and_video_frames():
    img = torch.zeros(1, 3, 4, 4)
    img[0, 0, :2, :2] = 1.0  # the top-left quarter of the red channel
    # pooled to 2 x 2: red = [[1, 0], [0, 0]], green and blue 0 -> 12 numbers, the first 1
    assert pixel_features(img, 2).tolist() == [[1.0] + [0.0] * 11]
    video = torch.stack([img[0], 1 - img[0]])[None]  # [1, F=2, 3, 4, 4]: frames become channels
    assert pixel_features(video, 1).tolist() == [[0.25, 0.0, 0.0, 0.75, 1.0, 1.0]]
