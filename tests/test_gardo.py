"""GARDO (arXiv 2512.24138): hand-computed win rates, uncertainty gate and diversity-amplified advantages,
the KL gated to the uncertain rows, the reference refreshed to the policy, the single-reward error, and a
tiny training run."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from flowalign.credit import CREDIT
from flowalign.credit.gardo import (
    GARDOOptions,
    check_gardo,
    diversity_multiplier,
    gardo,
    nearest_distance,
    uncertain_rows,
    uncertainty,
    win_rates,
)
from flowalign.overrides import apply_overrides
from flowalign.sampling.rollout import rollout
from flowalign.train.checks import check_variants
from flowalign.train.objectives import OBJECTIVES, UnitInputs
from flowalign.train.objectives.gardo import GARDOObjectiveOptions, gardo_loss, gardo_unit
from flowalign.train.presets import get_preset
from flowalign.types import Cond, Scores, StepOut


def close(a, b, tol=1e-6):
    assert torch.allclose(torch.as_tensor(a).float(), torch.as_tensor(b).float(), atol=tol), (a, b)


# --- credit: core formulas by hand ---------------------------------------------------------------------------
def test_win_rates_by_hand():
    # r = [3, 1, 2, 2], B - 1 = 3 others: row 0 beats 3 -> 1; row 1 beats 0 -> 0;
    # rows 2, 3 beat row 1 and tie each other: (1 + 0.5) / 3 = 0.5
    close(win_rates(torch.tensor([3.0, 1.0, 2.0, 2.0])), [1.0, 0.0, 0.5, 0.5])


def test_uncertainty_and_gate_by_hand():
    r, aux = torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    # w_train = [3, 2, 1, 0] / 3; w_aux = [0, 1, 2, 3] / 3 -> u = [1, 1/3, -1/3, -1]
    u = uncertainty(r, aux)
    close(u, [1.0, 1 / 3, -1 / 3, -1.0])
    assert uncertain_rows(u, 0.25).tolist() == [True, False, False, False]  # ceil(0.25 * 4) = 1 row
    assert uncertain_rows(u, 0.5).tolist() == [True, True, False, False]  # 2 rows
    assert uncertain_rows(u, 1.0).tolist() == [True, True, False, False]  # all 4, but only u > 0
    # two auxiliaries average: aux2 = training reward -> w_aux = mean([0,1,2,3]/3, [3,2,1,0]/3) = 1/2 each
    u2 = uncertainty(r, torch.stack([aux[:, 0], r], 1))
    close(u2, [0.5, 1 / 6, -1 / 6, -0.5])


def test_diversity_amplifies_only_above_mean_rows():
    # group 0: f0 = f1 = (1, 0), f2 = (0, 1): nearest cosine distances d = [0, 0, 1], mean d = 1/3
    # rewards [1, 2, 6], mean 3 -> centred [-2, -1, 3]; row 2 > 0 -> x d / mean d = 3 -> 9; others x 1
    # group 1 (rows 3, 4): f = (1, 1), (1, 0): d = 1 - 1/sqrt(2) each -> multiplier 1; rewards [0, 2] -> [-1, 1]
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    g = torch.tensor([0, 0, 0, 1, 1])
    d = nearest_distance(f, g)
    close(d, [0.0, 0.0, 1.0, 1 - 2**-0.5, 1 - 2**-0.5])
    close(diversity_multiplier(torch.tensor([-2.0, -1.0, 3.0, -1.0, 1.0]), d, g), [1, 1, 3, 1, 1], 1e-5)
    aux = torch.tensor([[0.0], [0.0], [9.0], [0.0], [0.0]])  # disagrees most with row 2's top reward
    out = gardo(torch.tensor([1.0, 2.0, 6.0, 0.0, 2.0]), g, torch.tensor([True, False]), auxiliary=aux, features=f)
    close(out.advantages[:, 0], [-2.0, -1.0, 9.0, -1.0, 1.0], 1e-5)
    assert out.mask[:, 0].all() and not out.mask[:, 1].any() and (out.advantages[:, 1] == 0).all()
    # u: w_train = [1, 2.5, 4, 0, 2.5] / 4, w_aux = [1.5, 1.5, 4, 1.5, 1.5] / 4 -> u = [-.125, .25, 0, -.375, .25]
    # ceil(0.1 * 5) = 1 row: the first of the tied top rows (1, 4)
    assert out.kl_weight.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0] and out.stats["uncertain_frac"] == pytest.approx(0.2)
    plain = gardo(torch.tensor([1.0, 2.0, 6.0, 0.0, 2.0]), g, torch.ones(1), auxiliary=aux, features=f, diversity=False)
    close(plain.advantages[:, 0], [-2.0, -1.0, 3.0, -1.0, 1.0])


# --- objective: the KL only on the uncertain rows -------------------------------------------------------------
def step(mean, log_prob):
    mean = torch.tensor(mean).view(3, 1)
    return StepOut(mean, mean, torch.full((3,), 0.5), torch.tensor(log_prob), mean)


def test_gated_kl_loss_by_hand():
    out, ref = step([0.3, 0.0, 0.2], [0.0, 0.0, 0.0]), step([0.1, 0.0, 0.0], [0.0, 0.0, 0.0])
    adv, mask = torch.tensor([1.0, -2.0, 0.5]), torch.ones(3, dtype=torch.bool)
    o = GARDOObjectiveOptions(clip_range=0.1, beta=0.5, kl_mode="exact")
    # on-policy ratio 1: policy = -mean(adv) = -(1 - 2 + 0.5) / 3 = 1/6
    # KL_i = (mu - mu_ref)^2 / (2 * 0.5^2) = 2 d^2 = [0.08, 0, 0.08]
    lo = gardo_loss(out, ref, torch.zeros(3), adv, mask, -0.1, torch.tensor([1.0, 0.0, 0.0]), o)
    assert lo.loss.item() == pytest.approx(1 / 6 + 0.5 * 0.08)  # KL of row 0 only
    lo = gardo_loss(out, ref, torch.zeros(3), adv, mask, -0.1, torch.tensor([0.0, 1.0, 1.0]), o)
    assert lo.loss.item() == pytest.approx(1 / 6 + 0.5 * (0.0 + 0.08) / 2)  # mean over rows 1, 2
    assert float(lo.stats["kl_rows"]) == 2.0
    lo = gardo_loss(out, ref, torch.zeros(3), adv, mask, -0.1, torch.zeros(3), o)
    assert lo.loss.item() == pytest.approx(1 / 6)  # no uncertain row: no KL
    masked = torch.tensor([True, True, False])  # row 2 masked: gate [0, 1, 0] -> KL 0; policy -(1 - 2) / 2
    lo = gardo_loss(out, ref, torch.zeros(3), adv, masked, -0.1, torch.tensor([0.0, 1.0, 1.0]), o)
    assert lo.loss.item() == pytest.approx(0.5)


# --- objective: the reference refreshed to the policy -----------------------------------------------------------
class TinyFlow(torch.nn.Module):
    """v = x * (0.2 + delta) + e: a ``transformer`` with one trainable tensor ``log_prob_at`` can recompute."""

    def __init__(self):
        super().__init__()
        self.transformer = torch.nn.Module()
        self.transformer.delta = torch.nn.Parameter(torch.zeros(3, 1, 1))
        self.nfe = 0

    def velocity(self, x, sigma, cond):
        self.nfe += len(x)
        return x * (0.2 + self.transformer.delta) + cond.embeds["e"].view(-1, 1, 1, 1)


def inputs(model, it, state, kl_weight=None, n=4):
    cond = Cond(embeds={"e": torch.linspace(-1, 1, n).unsqueeze(1)})
    x = torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ro = rollout(model, cond, x, torch.linspace(1, 0, 4), "flow_sde", torch.tensor([0.7, 0.7, 0.0]))
    return UnitInputs(None, model, cond, ro, [0, 1], it, list(range(n)), kl_weight=kl_weight, state=state)


def test_reference_refreshed_every_n_iterations():
    model, state = TinyFlow(), {}
    o = GARDOObjectiveOptions(clip_range=0.2, beta=1.0, ref_every=2)
    rows, adv, mask = torch.tensor([0, 2]), torch.tensor([1.0, -1.0]), torch.ones(2, dtype=torch.bool)
    gardo_unit(inputs(model, 0, state), o)  # iteration 0: the snapshot is the initial policy
    with torch.no_grad():
        model.transformer.delta.add_(0.1)  # an optimizer step
    unit = gardo_unit(inputs(model, 1, state), o)  # iteration 1: not due (1 - 0 < 2)
    assert not torch.equal(state["gardo_reference"]["weights"][0], model.transformer.delta)
    lo = unit(rows, 0, adv, mask)
    assert float(lo.stats["kl"]) > 0  # the policy moved away from the reference
    lo.loss.backward()  # the swap restored the weights without breaking the graph
    assert model.transformer.delta.grad is not None and torch.allclose(model.transformer.delta, torch.tensor(0.1))
    unit = gardo_unit(inputs(model, 2, state), o)  # iteration 2: refreshed
    assert torch.equal(state["gardo_reference"]["weights"][0], model.transformer.delta.detach())
    assert float(unit(rows, 0, adv, mask).stats["kl"]) == 0.0
    # the KL threshold refreshes early: iteration 3 measures KL > 0, iteration 4 would not be due by ref_every
    o2 = GARDOObjectiveOptions(clip_range=0.2, beta=1.0, ref_every=100, ref_kl_threshold=1e-12)
    with torch.no_grad():
        model.transformer.delta.add_(0.1)
    gardo_unit(inputs(model, 3, state), o2)(rows, 0, adv, mask)
    gardo_unit(inputs(model, 4, state), o2)
    assert state["gardo_reference"]["iteration"] == 4
    # a row outside the gate runs no reference forward: the NFE counts the current step only
    unit = gardo_unit(inputs(model, 5, state, kl_weight=torch.tensor([0.0, 0.0, 1.0, 0.0])), o2)
    nfe = model.nfe
    unit(rows[:1], 0, adv[:1], mask[:1])  # row 0: weight 0
    assert model.nfe - nfe == 1
    unit(rows[1:], 0, adv[1:], mask[1:])  # row 2: weight 1 -> + the reference forward
    assert model.nfe - nfe == 3


# --- registry, preset and bad input --------------------------------------------------------------------------
def test_registry_preset_and_single_reward_error():
    assert CREDIT["gardo"].fn is gardo and CREDIT["gardo"].needs == ("auxiliary", "features")
    assert OBJECTIVES["gardo"].build is gardo_unit
    cfg = get_preset("testbed_gardo")
    check_variants(cfg)
    assert cfg.credit.options.auxiliary == ["testbed_artifact"] and cfg.objective.kind == "gardo"
    with pytest.raises(ValueError, match=re.escape("credit.kind=gardo needs an uncertainty source")) as err:
        check_variants(apply_overrides(get_preset("testbed"), ["credit.kind=gardo"]))
    assert "credit.options.auxiliary=" in str(err.value)  # names the fix
    one = SimpleNamespace(reward=SimpleNamespace(weights={"testbed_aesthetic": 1.0}))
    with pytest.raises(ValueError, match="cannot disagree with itself"):
        check_gardo(GARDOOptions(auxiliary=["testbed_aesthetic"]), one)
    with pytest.raises(ValueError, match=re.escape("['nope'] is not a reward")):
        check_gardo(GARDOOptions(auxiliary=["nope"]), one)


# --- a tiny training run ---------------------------------------------------------------------------------------
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
    "train.iterations=2",
    "log.progress=false",
    "optim.lr=1e-2",
    "optim.steps_per_iteration=1",
    "credit.kind=gardo",
    "credit.scale=none",
    'credit.options.auxiliary=["darkness"]',
    "credit.options.kl_fraction=0.5",
    "objective.kind=gardo",
    "objective.options.clip_range=0.2",
    "objective.options.beta=1.0",
    "objective.options.ref_every=1",
    'reward.weights={"brightness": 1.0, "darkness": 0.0}',
]


def two_rewards(images, prompts, **meta):
    bright = images.mean((1, 2, 3))
    dark = -(images[:, 0] - images[:, 2]).abs().mean((1, 2))  # disagrees with brightness on some rows
    return Scores(total=bright, components={"brightness": bright, "darkness": dark})


def test_tiny_training_run_changes_parameters(tmp_path):
    from flowalign.train.data import PromptSet
    from flowalign.train.run import main, resolve_config

    cfg, _ = resolve_config(None, [*TINY, f"train.output_dir={tmp_path}/run"], None)
    torch.manual_seed(0)
    res = main(cfg, reward_fn=two_rewards, prompts=PromptSet(["a red circle", "two blue squares"], [{}] * 2))
    assert res.state.optimizer_step == 2 and res.state.skipped_steps == 0
    lora_b = {n: p for n, p in res.model.transformer.named_parameters() if p.requires_grad and "lora_B" in n}
    assert lora_b and any(bool((p != 0).any()) for p in lora_b.values())
    first = res.history[0]
    assert first["credit/uncertain_frac"] <= 0.5 and "train/kl_rows" in first
