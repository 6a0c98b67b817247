"""The NudeNet safety reward: the penalty's aggregation by hand, then NudeNet's shipped detector on
benign images (rendered text, noise: no unsafe detection, reward 1)."""

from __future__ import annotations

import pytest
import torch

from flowalign.rewards import load_reward
from flowalign.rewards.safety import unsafe_probability

pytest.importorskip("nudenet", reason="pip install nudenet (ships its detector)")


def test_penalty_is_the_most_confident_unsafe_detection():
    found = [
        {"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 4, 4]},  # not unsafe: ignored
        {"class": "BUTTOCKS_EXPOSED", "score": 0.35, "box": [0, 0, 4, 4]},
        {"class": "FEMALE_BREAST_EXPOSED", "score": 0.6, "box": [0, 0, 4, 4]},
    ]
    assert unsafe_probability(found) == 0.6  # max(0.35, 0.6); reward 1 - 0.6 = 0.4
    assert unsafe_probability(found[:1]) == 0.0
    assert unsafe_probability(found, unsafe=("BUTTOCKS_EXPOSED",)) == 0.35


def test_shipped_detector_on_benign_images():
    from text_images import fonts, render, to_tensor

    reward = load_reward("nudenet_safety")
    x = torch.cat([to_tensor([render("Coffee Shop", fonts()[0][1], size=96)]), torch.rand(1, 3, 96, 96)])
    assert reward(x, "a sign").tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="must name NudeNet classes"):
        load_reward("nudenet_safety", unsafe=["NSFW"])
