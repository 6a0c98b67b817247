"""Dynamic-TreeRPO's LayerTuning-RL objective (arXiv 2509.23352): the adaptive clip bounds and the
advantage-weighted SFT term by hand, the reduction to Flow-GRPO, bad input, and a tiny tree training run."""

from __future__ import annotations

import pytest
import torch

from flowalign.overrides import apply_overrides
from flowalign.train.checks import check_variants
from flowalign.train.losses import flow_grpo_loss
from flowalign.train.objectives import OBJECTIVES
from flowalign.train.objectives.dynamic_treerpo import (
    DynamicTreeRPOOptions,
    adaptive_clip,
    dynamic_treerpo_loss,
    dynamic_treerpo_unit,
)
from flowalign.train.presets import get_preset
from flowalign.types import StepOut


def close(a, b, tol=1e-6):
    assert torch.allclose(torch.as_tensor(a).float(), torch.as_tensor(b).float(), atol=tol), (a, b)


def test_adaptive_clip_bounds_by_hand():
    o = DynamicTreeRPOOptions(clip_range=0.1, adv_clip=5.0, clip_gain=1.0)
    # a = clamp(A / 5, -1, 1) = [1, -0.5, 0, 1]; eps_lo = 0.1 (1 + relu(-a)); eps_hi = 0.1 (1 + relu(a))
    lo, hi = adaptive_clip(torch.tensor([5.0, -2.5, 0.0, 10.0]), o)
    close(lo, [0.1, 0.15, 0.1, 0.1])
    close(hi, [0.2, 0.1, 0.1, 0.2])
    # asymmetric base: eps_high 0.3 scales the upper side only; clip_gain 2
    lo, hi = adaptive_clip(torch.tensor([2.5, -5.0]), DynamicTreeRPOOptions(0.1, 0.3, clip_gain=2.0))
    close(lo, [0.1, 0.3])  # 0.1 (1 + 2 x 1) for a = -1
    close(hi, [0.6, 0.3])  # 0.3 (1 + 2 x 0.5) for a = 0.5


def out_step(log_prob, x0_pred):
    x = torch.tensor(x0_pred).view(2, 1)
    return StepOut(x, x, torch.full((2,), 0.5), torch.tensor(log_prob).log(), x)


def test_loss_with_adaptive_clip_and_sft_by_hand():
    out = out_step([1.3, 0.8], [1.0, 0.0])  # ratios 1.3 and 0.8 against old log-prob 0
    adv, mask, x_final = torch.tensor([5.0, -2.5]), torch.ones(2, dtype=torch.bool), torch.zeros(2, 1)
    o = DynamicTreeRPOOptions(clip_range=0.1, beta=0.0, clip_gain=1.0, sft_weight=0.1, sft_decay=0.5)
    lam = 0.1 * 0.5**2  # iteration 2
    # row 0: A 5, eps_hi 0.2: max(-5 x 1.3, -5 x 1.2) = -6; row 1: A -2.5, eps_lo 0.15: max(2.0, 2.125) = 2.125
    # policy = (-6 + 2.125) / 2 = -1.9375; SFT: p = [1, 0], err = [1, 0] -> 0.025 x (1 x 1 + 0) / 2 = 0.0125
    lo = dynamic_treerpo_loss(out, None, torch.zeros(2), adv, mask, -0.1, x_final, o, lam)
    assert lo.loss.item() == pytest.approx(-1.9375 + 0.0125, rel=1e-6)
    assert float(lo.stats["sft"]) == pytest.approx(0.0125) and float(lo.stats["clip_hi_mean"]) == pytest.approx(0.15)
    # fixed clip (gain 0): row 0 max(-6.5, -5.5) = -5.5; row 1 max(2.0, 2.25) = 2.25 -> -1.625
    fixed = DynamicTreeRPOOptions(clip_range=0.1, beta=0.0, clip_gain=0.0, sft_weight=0.0)
    assert dynamic_treerpo_loss(out, None, torch.zeros(2), adv, mask, -0.1, x_final, fixed, 0.0).loss.item() == (
        pytest.approx(-1.625, rel=1e-6)
    )


def test_switched_off_equals_flow_grpo_loss():
    w = torch.tensor([0.3, -0.2], requires_grad=True)
    new = StepOut(w.view(2, 1), w.view(2, 1), torch.full((2,), 0.4), w * 0.5, w.view(2, 1))
    ref = StepOut(torch.zeros(2, 1), torch.zeros(2, 1), torch.full((2,), 0.4), torch.zeros(2), torch.zeros(2, 1))
    adv, mask = torch.tensor([1.0, -1.0]), torch.tensor([True, True])
    o = DynamicTreeRPOOptions(clip_range=0.05, beta=0.1, clip_gain=0.0, sft_weight=0.0)
    a = dynamic_treerpo_loss(new, ref, torch.zeros(2), adv, mask, -0.2, torch.zeros(2, 1), o, 0.0)
    b = flow_grpo_loss(new, ref, torch.zeros(2), adv, mask, -0.2, clip_range=0.05, beta=0.1)
    assert torch.equal(a.loss, b.loss)


def test_registry_preset_and_bad_input():
    entry = OBJECTIVES["dynamic_treerpo"]
    assert entry.build is dynamic_treerpo_unit and entry.options is DynamicTreeRPOOptions
    cfg = get_preset("testbed_dynamic_treerpo")
    check_variants(cfg)
    assert cfg.credit.kind == "treegrpo" and cfg.credit.options.depth_noise == 0.5
    with pytest.raises(ValueError, match=r"objective\.options\.sft_decay=0\.0"):
        check_variants(apply_overrides(cfg, ["objective.options.sft_decay=0"]))
    with pytest.raises(ValueError, match=r"objective\.options\.clip_gain=-1\.0"):
        check_variants(apply_overrides(cfg, ["objective.options.clip_gain=-1"]))


TINY = [
    "model.path=tiny-sd3",
    "model.resolution=16",
    "model.lora_targets=attn.to_q,attn.to_k,attn.to_v,attn.to_out.0",
    "model.lora_rank=4",
    "model.lora_alpha=8",
    "sample.num_steps=3",
    "sample.window.kind=all",
    "sample.group_size=4",
    "sample.groups_per_iteration=1",
    "sample.batch_size=4",
    "eval.every=0",
    "train.ema=false",
    "train.iterations=1",
    "log.progress=false",
    "optim.lr=1e-2",
    "optim.steps_per_iteration=1",
    "credit.kind=treegrpo",
    "credit.options.splits=[0,1]",
    "credit.options.branch=[2]",
    "credit.options.depth_noise=0.5",
    "objective.kind=dynamic_treerpo",
    "objective.options.clip_range=0.2",
    "objective.options.sft_weight=1.0",
]


def test_tiny_tree_training_run_changes_parameters(tmp_path):
    from flowalign.train.data import PromptSet
    from flowalign.train.run import main, resolve_config

    cfg, _ = resolve_config(None, [*TINY, f"train.output_dir={tmp_path}/run"], None)
    torch.manual_seed(0)
    res = main(cfg, reward_fn=lambda im, p, **m: im.mean((1, 2, 3)), prompts=PromptSet(["a red circle"], [{}]))
    assert res.state.optimizer_step == 1 and res.state.skipped_steps == 0
    lora_b = {n: p for n, p in res.model.transformer.named_parameters() if p.requires_grad and "lora_B" in n}
    assert lora_b and any(bool((p != 0).any()) for p in lora_b.values())
    assert res.history[0]["train/sft"] > 0 and res.history[0]["train/clip_hi_mean"] >= 0.2
