"""Video rewards on hand-made clips: frame choices, the lifted image reward, temporal consistency.

What must hold (issue): a static clip scores higher temporal consistency than a flickering one; the
frame-lifted reward equals the image reward on a clip of identical frames (hand-computed where
possible); clips are [B, F, 3, H, W] in [0, 1] and images [B, 3, H, W] are one-frame clips.
"""

from __future__ import annotations

import pytest
import torch

from flowalign.rewards import load_reward
from flowalign.rewards.video import FrameReward, TemporalConsistencyReward, frame_indices


def brightness(images, prompts):
    """A hand-computable differentiable image reward: mean pixel value."""
    return images.mean((1, 2, 3))


def ramp_clip(values, h=4, w=4):
    """[1, F, 3, h, w] clip whose frame t is the constant values[t]."""
    v = torch.as_tensor(values, dtype=torch.float32)
    return v.view(1, -1, 1, 1, 1).expand(1, v.numel(), 3, h, w).clone()


# --- frame choices ---------------------------------------------------------------------------------
def test_frame_indices_by_hand():
    assert frame_indices(9, "uniform", 4, 4, 1).tolist() == [[0, 3, 5, 8]]  # 8/3 = 2.67 -> 3, 16/3 -> 5
    assert frame_indices(9, "uniform", 3, 4, 1).tolist() == [[0, 4, 8]]
    assert frame_indices(9, "segment", 4, 4, 1).tolist() == [[1, 3, 5, 7]]  # segments [0,2) [2,4) [4,6) [6,9)
    assert frame_indices(9, "stride", 4, 4, 2).tolist() == [[0, 4, 8], [0, 4, 8]]
    assert frame_indices(3, "uniform", 4, 4, 1).tolist() == [[0, 1, 2]]  # F <= k: every frame once
    assert frame_indices(5, "all", 2, 4, 1).tolist() == [[0, 1, 2, 3, 4]]
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([frame_indices(9, "segment", 4, 4, 8, g) for _ in range(4)])  # [32, 4]
    lo, hi = torch.tensor([0, 2, 4, 6]), torch.tensor([2, 4, 6, 9])
    assert bool(((draws >= lo) & (draws < hi)).all()) and len({tuple(r) for r in draws.tolist()}) > 1


def test_lifted_reward_by_hand():
    values = [(t / 8) ** 2 for t in range(9)]
    clip = ramp_clip(values)
    uniform = FrameReward(brightness, frames="uniform", k=4)(clip, "x")
    assert uniform.item() == pytest.approx(sum(values[i] for i in (0, 3, 5, 8)) / 4, abs=1e-7)
    segment = FrameReward(brightness, frames="segment", k=4)(clip, "x")
    assert segment.item() == pytest.approx(sum(values[i] for i in (1, 3, 5, 7)) / 4, abs=1e-7)
    stride = FrameReward(brightness, frames="stride", stride=4)(clip, "x")
    assert stride.item() == pytest.approx((values[0] + values[4] + values[8]) / 3, abs=1e-7)
    rnd = FrameReward(brightness, frames="segment", k=4, random=True, seed=3)
    picks = rnd.frame_indices(9, 1)  # the reward's own generator: reproducible from the seed
    assert torch.equal(FrameReward(brightness, frames="segment", k=4, random=True, seed=3).frame_indices(9, 1), picks)


def test_lifted_reward_equals_image_reward_on_identical_frames():
    image_reward = load_reward("testbed_aesthetic")  # a real (trained) image reward
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=g)
    prompts = ["a red circle", "two blue squares", "a green star"]
    clips = images[:, None].expand(3, 9, 3, 32, 32)  # 9 identical frames each
    expected = image_reward(images, prompts)
    for frames in ("uniform", "segment", "stride", "all"):
        lifted = load_reward("video_frames", reward=image_reward, frames=frames, k=3)
        assert lifted.name == f"{image_reward.name}_frames"
        assert (lifted(clips, prompts) - expected).abs().max().item() <= 1e-5
    by_name = load_reward("video_frames", reward="testbed_aesthetic", k=2)
    assert (by_name(clips, prompts) - expected).abs().max().item() <= 1e-5
    assert (by_name(images, prompts) - expected).abs().max().item() <= 1e-5  # images = one-frame clips


def test_lifted_reward_repeats_prompts_and_metadata_per_frame():
    seen = {}

    def spy(images, prompts, weight=None):
        seen.update(prompts=list(prompts), weight=weight)
        return images.mean((1, 2, 3)) * weight

    clips = torch.stack([ramp_clip([0.2] * 5)[0], ramp_clip([0.6] * 5)[0]])
    out = FrameReward(spy, frames="uniform", k=2)(clips, ["a", "b"], weight=torch.tensor([1.0, 2.0]))
    assert seen["prompts"] == ["a", "a", "b", "b"] and seen["weight"].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert out.tolist() == pytest.approx([0.2, 1.2])


# --- temporal consistency --------------------------------------------------------------------------
def test_static_clip_is_more_consistent_than_flickering():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 16, 16, generator=g)
    static = a.expand(1, 6, 3, 16, 16)
    flicker = torch.stack([a if t % 2 == 0 else 1 - a for t in range(6)])[None]
    black_white = ramp_clip([0, 1, 0, 1, 0, 1])
    mse, cosine = TemporalConsistencyReward(), load_reward("temporal_consistency", measure="cosine")
    assert mse(static, "x").item() == 0.0 and cosine(static, "x").item() == pytest.approx(1.0, abs=1e-6)
    assert mse(flicker, "x").item() < mse(static, "x").item()
    assert cosine(flicker, "x").item() < cosine(static, "x").item()
    assert mse(flicker, "x").item() == pytest.approx(-((1 - 2 * a) ** 2).mean().item(), abs=1e-6)  # by hand
    assert mse(black_white, "x").item() == -1.0 and cosine(black_white, "x").item() == pytest.approx(-1.0)
    feats = TemporalConsistencyReward("cosine", features=lambda x: x.mean((2, 3)) - 0.5)  # a feature space
    assert feats(flicker, "x").item() < feats(static, "x").item()
    one_frame = a[None]  # images: a one-frame clip has no pair, scored as static
    assert mse(one_frame, "x").item() == 0.0 and cosine(one_frame, "x").item() == 1.0


def test_video_rewards_are_differentiable():
    clip = ramp_clip([0.1, 0.5, 0.3, 0.9, 0.2]).requires_grad_(True)
    total = TemporalConsistencyReward()(clip, "x").sum() + FrameReward(brightness, k=2)(clip, "x").sum()
    total.backward()
    assert clip.grad is not None and bool(clip.grad.abs().sum() > 0)


def test_bad_video_input_is_one_clear_error():
    reward = TemporalConsistencyReward()
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\].*got \(2, 5, 4, 8, 8\)"):
        reward(torch.rand(2, 5, 4, 8, 8), "x")
    with pytest.raises(ValueError, match="got 1 prompts for 2 images"):
        reward(torch.rand(2, 5, 3, 8, 8), ["x"])
    with pytest.raises(ValueError, match="frames='nope'"):
        FrameReward(brightness, frames="nope")
    with pytest.raises(ValueError, match="random=True .* frames='segment'"):
        FrameReward(brightness, frames="uniform", random=True)
