"""Pref-GRPO (arXiv 2508.20751): within-group win rates by hand (hard and Bradley-Terry judges), the
advantages as GRPO of the win rates, zero-std masking, the config check and a tiny training run."""

import math
import re

import pytest
import torch
from test_trainer import PROMPTS, TINY, brightness

from flowalign.credit import CREDIT, grpo
from flowalign.credit.pref import PrefGRPOOptions, check_pref, pairwise_preferences, pref_grpo, win_rates
from flowalign.train import apply_overrides, get_preset
from flowalign.train.checks import validate

close = torch.testing.assert_close


def test_win_rates_by_hand_group_of_four():
    # rewards [0.3, 0.9, 0.1, 0.5]: sample 0 beats {2} of 3 others -> 1/3; sample 1 beats {0, 2, 3} -> 3/3;
    # sample 2 beats nobody -> 0; sample 3 beats {0, 2} -> 2/3. Sum = 2 = G/2 (mean 1/2).
    r = torch.tensor([0.3, 0.9, 0.1, 0.5])
    w = win_rates(r, torch.zeros(4, dtype=torch.long))
    close(w, torch.tensor([1 / 3, 1.0, 0.0, 2 / 3]))
    assert math.isclose(float(w.sum()), 2.0, abs_tol=1e-6)


def test_ties_split_the_point_and_groups_stay_apart():
    # group 0: [1, 1, 0] -> sample 0: beats 2, ties 1 -> (1 + 0.5)/2 = 0.75; same for sample 1; sample 2: 0
    # group 1: [5, 2] (a group of two, much larger scores: never compared with group 0) -> [1, 0]
    r = torch.tensor([1.0, 1.0, 0.0, 5.0, 2.0])
    g = torch.tensor([0, 0, 0, 1, 1])
    close(win_rates(r, g), torch.tensor([0.75, 0.75, 0.0, 1.0, 0.0]))
    p = pairwise_preferences(r)
    close(p + p.T, torch.ones(5, 5))  # p(i beats j) + p(j beats i) = 1, diagonal 0.5 + 0.5


def test_bradley_terry_by_hand():
    # rewards [0, 1, 3], tau 2: sigmoid(-0.5) = .3775407, sigmoid(-1.5) = .1824255, sigmoid(-1) = .2689414
    # w_0 = (s(-0.5) + s(-1.5))/2 = .2799831; w_1 = (s(0.5) + s(-1))/2 = (.6224593 + .2689414)/2 = .4457004
    # w_2 = (s(1.5) + s(1))/2 = (.8175745 + .7310586)/2 = .7743165; sum = 1.5 = G/2
    w = win_rates(torch.tensor([0.0, 1.0, 3.0]), torch.zeros(3), judge="bradley_terry", tau=2.0)
    close(w, torch.tensor([0.2799831, 0.4457004, 0.7743165]))


def test_advantages_are_grpo_of_the_win_rates():
    torch.manual_seed(0)
    r, g = torch.rand(8), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    step_mask = torch.tensor([True, True, False])
    for judge in ("hard", "bradley_terry"):
        out = pref_grpo(r, g, step_mask, eps=1e-6, judge=judge, tau=0.3)
        ref = grpo(win_rates(r, g, judge, 0.3), g, step_mask, eps=1e-6)
        assert out.advantages.shape == (8, 3)
        close(out.advantages, ref.advantages)
        assert torch.equal(out.mask, ref.mask) and not out.mask[:, 2].any()
    # hand: rewards ranked [1, 2, 3, 4] -> w = [0, 1/3, 2/3, 1], mean 1/2, devs [-1/2, -1/6, 1/6, 1/2],
    # pop var (1/4 + 1/36 + 1/36 + 1/4)/4 = 5/36 -> std sqrt(5)/6 = .3726780
    # A = dev / std = [-1.3416408, -.4472136, .4472136, 1.3416408]
    out = pref_grpo(torch.tensor([1.0, 2, 3, 4]), torch.zeros(4), torch.ones(1, dtype=torch.bool), eps=0.0)
    close(out.advantages[:, 0], torch.tensor([-1.3416408, -0.4472136, 0.4472136, 1.3416408]))


def test_scale_invariance_of_pointwise_gaps():
    # the hard judge only sees the order: gaps of 1e-6 and of 10 give the same advantages
    g, m = torch.zeros(3), torch.ones(2, dtype=torch.bool)
    a = pref_grpo(torch.tensor([0.0, 1e-6, 2e-6]), g, m).advantages
    b = pref_grpo(torch.tensor([0.0, 10.0, 20.0]), g, m).advantages
    close(a, b)


def test_zero_std_groups_masked():
    # group 0 all tied -> all win rates 0.5, std 0 -> masked; group 1 informative
    r, g = torch.tensor([2.0, 2.0, 2.0, 0.0, 1.0, 3.0]), torch.tensor([0, 0, 0, 1, 1, 1])
    out = pref_grpo(r, g, torch.ones(2, dtype=torch.bool))
    assert not out.mask[:3].any() and (out.advantages[:3] == 0).all()
    assert out.mask[3:].all() and out.stats["zero_std_frac"] == 0.5
    kept = pref_grpo(r, g, torch.ones(2, dtype=torch.bool), filter_zero_std=False)
    assert kept.mask.all() and (kept.advantages[:3] == 0).all()


def test_registered_and_checked():
    scheme = CREDIT["pref_grpo"]
    assert scheme.fn is pref_grpo and scheme.options is PrefGRPOOptions and scheme.needs == ()
    check_pref(PrefGRPOOptions(judge="bradley_terry"), None)
    with pytest.raises(ValueError, match=re.escape("credit.options.judge='vlm'")):
        check_pref(PrefGRPOOptions(judge="vlm"), None)
    with pytest.raises(ValueError, match="judge 'vlm'"):
        pref_grpo(torch.zeros(2), torch.zeros(2), torch.ones(1), judge="vlm")
    cfg = apply_overrides(get_preset("testbed_pref_grpo"), ["credit.options.judge=vlm"])
    with pytest.raises(ValueError, match=re.escape("credit.options.judge='vlm'")):
        validate(cfg)
    cfg = apply_overrides(get_preset("testbed_pref_grpo"), ["credit.options.tau=0"])
    with pytest.raises(ValueError, match=re.escape("credit.options.tau=0.0 is out of range")):
        validate(cfg)
    validate(get_preset("testbed_pref_grpo"))


def test_tiny_training_run_changes_parameters(tmp_path):
    from flowalign.train.run import main, resolve_config

    items = TINY + ["credit.kind=pref_grpo", "credit.options.judge=bradley_terry", f"train.output_dir={tmp_path}/run"]
    cfg, _ = resolve_config(None, items, None)
    assert cfg.credit.kind == "pref_grpo" and isinstance(cfg.credit.options, PrefGRPOOptions)
    torch.manual_seed(0)
    res = main(cfg, reward_fn=brightness, prompts=PROMPTS)
    assert res.state.optimizer_step > 0 and res.state.skipped_steps == 0
    # LoRA B starts at zero (the adapter is the identity): any nonzero entry is a training update
    lora_b = {n: p for n, p in res.model.transformer.named_parameters() if p.requires_grad and "lora_B" in n}
    assert lora_b and any(bool((p != 0).any()) for p in lora_b.values())
