"""DRAGON (arXiv 2504.15217): the Vendi set reward and the greedy positive / negative split by hand, the
KTO loss by hand, the set-of-one errors, and a short testbed run that moves the LoRA."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from test_draft import run_tiny

from flowalign.train.objectives import OBJECTIVES
from flowalign.train.objectives.dragon import (
    DragonOptions,
    check_dragon,
    kto_loss,
    set_reward,
    split_group,
    vendi_score,
)

E1, E2 = [1.0, 0.0], [0.0, 1.0]


def test_vendi_score_by_hand():
    # identical rows: K / 2 = [[.5, .5], [.5, .5]], eigenvalues {1, 0} -> exp(0) = 1
    assert float(vendi_score(torch.tensor([E1, E1]))) == pytest.approx(1.0)
    # orthogonal rows: eigenvalues {.5, .5} -> exp(ln 2) = 2
    assert float(vendi_score(torch.tensor([E1, E2]))) == pytest.approx(2.0)
    # e1, e1, e2: eigenvalues of K / 3 {2/3, 1/3, 0} -> exp(-(2/3 ln 2/3 + 1/3 ln 1/3)) = 1.8899
    expected = math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert float(vendi_score(torch.tensor([E1, E1, E2]))) == pytest.approx(expected, rel=1e-6)
    # R(D) = mean reward + w log Vendi: (1 + .2) / 2 + .5 ln 2
    assert float(set_reward(torch.tensor([1.0, 0.2]), torch.tensor([E1, E2]), 0.5)) == pytest.approx(
        0.6 + 0.5 * math.log(2)
    )


def test_greedy_split_by_hand():
    rewards = torch.tensor([1.0, 0.9, 0.2, 0.1])
    feats = torch.tensor([E1, E1, E2, E2])
    # weight 0: the two best instances
    assert split_group(rewards, feats, 0.0).tolist() == [True, True, False, False]
    # weight 1, from row 0: + row 1 -> .95 + ln 1 = .95; + row 2 -> .6 + ln 2 = 1.293; + row 3 -> .55 + ln 2 = 1.243
    assert split_group(rewards, feats, 1.0).tolist() == [True, False, True, False]


def test_kto_loss_by_hand():
    # d = err - err_ref = .01, beta = 100: positive 1 - sigmoid(-1) = .73106, negative 1 - sigmoid(1) = .26894
    err, ref = torch.tensor([0.02, 0.02]), torch.tensor([0.01, 0.01])
    assert float(kto_loss(err[:1], ref[:1], torch.tensor([1.0]), 100.0)) == pytest.approx(0.7310586)
    assert float(kto_loss(err[1:], ref[1:], torch.tensor([-1.0]), 100.0)) == pytest.approx(0.2689414)
    assert float(kto_loss(err, ref, torch.tensor([1.0, -1.0]), 100.0)) == pytest.approx(0.5)
    # a positive sample's loss falls as its error falls below the reference's
    e = torch.tensor([0.02], requires_grad=True)
    kto_loss(e, torch.tensor([0.01]), torch.tensor([1.0]), 100.0).backward()
    assert float(e.grad) > 0


def test_set_of_one_is_one_clear_error_each():
    with pytest.raises(ValueError, match=r"a set-level reward needs a set of >= 2 samples, got a set of 1"):
        vendi_score(torch.tensor([E1]))
    with pytest.raises(ValueError, match=r"a group of 3 gives a set of 1"):
        split_group(torch.tensor([1.0, 0.5, 0.2]), torch.tensor([E1, E2, E1]), 0.1)
    with pytest.raises(ValueError, match=r"use sample.group_size >= 4"):
        check_dragon(DragonOptions(), SimpleNamespace(sample=SimpleNamespace(group_size=3)))
    check_dragon(DragonOptions(), SimpleNamespace(sample=SimpleNamespace(group_size=4)))
    assert OBJECTIVES["dragon"].check is check_dragon


def test_testbed_step_moves_the_lora(tmp_path):
    over = ["objective.kind=dragon", "sample.group_size=4", "sample.batch_size=4", "sample.window.options.start=1"]
    res, params = run_tiny(tmp_path, over)
    first = res.history[0]
    assert res.state.optimizer_step == 1 and res.state.skipped_steps == 0
    assert first["train/error_gap"] == 0.0  # B = 0: the adapter starts at the base
    assert first["train/set_reward_pos"] > first["train/set_reward_neg"]
    lora_b = [n for n in params if "lora_B" in n]
    assert lora_b and all(not torch.equal(*params[n]) for n in lora_b)
