"""PAR and reward-model ensembles (flowalign/rewards/shaping.py): hand-computed values, the NaN
reference refused, registry / preset wiring, and a short training run that moves the LoRA."""

from __future__ import annotations

import math

import pytest
import torch

from flowalign.rewards import MultiReward
from flowalign.rewards.base import Reward
from flowalign.rewards.registry import REWARDS, load_reward
from flowalign.rewards.shaping import EnsembleReward, PARReward


class Table(Reward):
    """Returns fixed scores per row (ignores the pixels), differentiable through a zero pixel term."""

    name = "table"

    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values, dtype=torch.float32)

    def score(self, images, prompts, **metadata):
        return self.values[: images.shape[0]] + 0.0 * images.mean((1, 2, 3))


class Brightness(Reward):
    name = "brightness"

    def score(self, images, prompts, **metadata):
        return images.mean((1, 2, 3))


def imgs(b):
    return torch.rand(b, 3, 8, 8)


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# --- PAR ---------------------------------------------------------------------------------------------
def test_par_hand_values_with_reference_reward():
    par = PARReward(Table([0.5, 1.0, -1.0]))
    out = par(imgs(3), ["a", "b", "c"], reference_reward=[0.2, 1.0, 1.0])
    # sigmoid(0.5 - 0.2) = sigmoid(0.3) = 0.5744; sigmoid(0) = 0.5; sigmoid(-2) = 0.1192
    assert torch.allclose(out, torch.tensor([0.5744, 0.5, 0.1192]), atol=1e-4)
    # M = 2 references per prompt: (sigmoid(0.5 - 0.2) + sigmoid(0.5 - 0.5)) / 2 = (0.5744 + 0.5) / 2 = 0.5372
    out2 = par(imgs(3), ["a", "b", "c"], reference_reward=torch.tensor([[0.2, 0.5], [1.0, 1.0], [1.0, 1.0]]))
    assert abs(float(out2[0]) - 0.5372) < 1e-4
    # a scalar reference goes to every row: sigmoid(0.5 - 0) = 0.6225
    assert abs(float(par(imgs(3), "a", reference_reward=0.0)[0]) - 0.6225) < 1e-4


def test_par_group_mean_when_no_reference():
    # prompts a, a, b, b: group means 0.5 and -1.0 -> sigmoid(+-0.5) = 0.6225 / 0.3775, sigmoid(0) = 0.5
    par = PARReward(Table([1.0, 0.0, -1.0, -1.0]))
    out = par(imgs(4), ["a", "a", "b", "b"])
    assert torch.allclose(out, torch.tensor([sig(0.5), sig(-0.5), 0.5, 0.5]), atol=1e-6)
    assert abs(sig(0.5) - 0.6225) < 1e-4


def test_par_nan_reference_refused():
    par = PARReward(Table([0.5, 1.0]))
    with pytest.raises(ValueError, match="reference_reward") as e:
        par(imgs(2), ["a", "b"], reference_reward=[0.2, float("nan")])
    assert "1 NaN/inf" in str(e.value)
    with pytest.raises(ValueError, match="reference_reward"):
        par(imgs(2), ["a", "b"], reference_reward=[0.2, 0.1, 0.0])


def test_par_is_bounded_and_differentiable():
    par = PARReward(Brightness())
    x = imgs(4).requires_grad_(True)
    out = par(x, ["a"] * 4, reference_reward=torch.full((4,), 0.5))
    assert ((out > 0) & (out < 1)).all() and par.differentiable
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- ensembles ---------------------------------------------------------------------------------------
def test_ensemble_min_and_mean_minus_std_by_hand():
    a, b, c = Table([1.0, 0.0]), Table([3.0, 0.0]), Table([2.0, 3.0])
    # row 0: members 1, 3, 2 -> min 1; mean 2, population std sqrt(((1-2)^2 + (3-2)^2 + 0) / 3) = sqrt(2/3) = 0.8165
    #        mean - 1.5 std = 2 - 1.2247 = 0.7753
    # row 1: members 0, 0, 3 -> min 0; mean 1, std sqrt((1 + 1 + 4) / 3) = sqrt(2) = 1.4142 -> 1 - 2.1213 = -1.1213
    mn = EnsembleReward([a, b, c], aggregate="min")
    assert torch.allclose(mn(imgs(2), "p"), torch.tensor([1.0, 0.0]))
    ms = EnsembleReward({"a": a, "b": b, "c": c}, aggregate="mean_minus_std", k=1.5)
    assert torch.allclose(ms(imgs(2), "p"), torch.tensor([0.7753, -1.1213]), atol=1e-4)
    assert set(ms.last_members) == {"a", "b", "c"} and torch.equal(ms.last_members["c"], torch.tensor([2.0, 3.0]))
    # scales: b x 0.25 -> row 0: members 1, 0.75, 2 -> min 0.75; row 1: 0, 0, 3 -> min 0
    sc = EnsembleReward({"a": a, "b": b, "c": c}, aggregate="min", scales={"b": 0.25})
    assert torch.allclose(sc(imgs(2), "p"), torch.tensor([0.75, 0.0]))


def test_ensemble_errors():
    with pytest.raises(ValueError, match="aggregate"):
        EnsembleReward([Table([1.0]), Table([2.0])], aggregate="median")
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleReward([Table([1.0])])
    for scales in ({"m0": 0.0}, {"m0": float("nan")}, {"zz": 1.0}):
        with pytest.raises(ValueError, match="give a number > 0 per member name"):
            EnsembleReward([Table([1.0]), Table([2.0])], scales=scales)

    class OneRow(torch.nn.Module):  # a member that drops rows
        def forward(self, images, prompts, **metadata):
            return torch.ones(1)

    bad = EnsembleReward([Table([1.0, 2.0]), OneRow()])
    with pytest.raises(ValueError, match="member 'm1' returned 1 scores for a batch of 2"):
        bad(imgs(2), "p")


# --- registry / preset -------------------------------------------------------------------------------
def test_registry_builds_par_and_ensemble_with_options():
    assert "par" in REWARDS and "ensemble" in REWARDS
    x, prompts = torch.rand(4, 3, 32, 32), ["a red circle"] * 2 + ["two blue squares"] * 2
    base = load_reward("testbed_aesthetic")(x, prompts)
    par = load_reward("par", base="testbed_aesthetic")
    ref = torch.full((4,), 5.0)
    assert torch.allclose(par(x, prompts, reference_reward=ref), torch.sigmoid(base - 5.0), atol=1e-5)
    ens = load_reward("ensemble", members=["testbed_aesthetic", "testbed_artifact"], aggregate="min")
    art = load_reward("testbed_artifact")(x, prompts)
    assert torch.allclose(ens(x, prompts), torch.minimum(base, art), atol=1e-5)
    ens5 = load_reward("ensemble", members={"testbed_aesthetic": {}, "testbed_artifact": {"scale": 5.0}})
    assert torch.allclose(ens5(x, prompts), torch.minimum(base, 5.0 * art), atol=1e-5)
    multi = MultiReward({"par": 1.0}, par={"base": "testbed_aesthetic"})  # as build_reward passes reward.options
    assert isinstance(multi.rewards["par"], PARReward)


def test_preset_testbed_par():
    from flowalign.train import get_preset

    cfg, reg = get_preset("testbed_par"), get_preset("testbed_artifact_reg")
    assert cfg.reward.weights == {"par": 1.0} and cfg.reward.options == {"par": {"base": "testbed_aesthetic"}}
    assert cfg.objective.options.beta == reg.objective.options.beta and cfg.eval.metrics == reg.eval.metrics
    assert cfg.sample.window == reg.sample.window and cfg.preset == "testbed_par"


# --- a short training run ----------------------------------------------------------------------------
def test_training_with_par_changes_parameters(tmp_path):
    from test_trainer import TINY

    from flowalign.train import apply_overrides, get_preset
    from flowalign.train.data import PromptSet
    from flowalign.train.run import main

    cfg = apply_overrides(get_preset("testbed"), TINY + [f"train.output_dir={tmp_path / 'run'}"])
    texts = ["a red circle", "two blue squares", "a green triangle", "a yellow star"]
    prompts = PromptSet(texts, [{"reference_reward": 0.4}] * 4)  # a per-prompt reference value
    seen = []

    class Spy(Brightness):
        def score(self, images, prompts, **metadata):
            seen.append(metadata)
            return super().score(images, prompts, **metadata)

    res = main(cfg, reward_fn=PARReward(Spy()), prompts=prompts)
    assert seen and all("reference_reward" not in m for m in seen)  # the reference is PAR's, not the base's
    # peft's 'gaussian' init (model.lora_init) starts every lora_B at 0: a nonzero one has been trained
    lora_b = [p.detach() for n, p in res.model.transformer.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)
    assert res.state.optimizer_step >= 1 and res.state.skipped_steps == 0
