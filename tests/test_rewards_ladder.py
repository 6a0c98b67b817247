"""Reward ladders on the analytic Gaussian-mixture flow: the batched, cached ladder equals completing
every state separately (sampling.rollout.complete), and its NFE matches hand counts."""

from __future__ import annotations

import pytest
import torch

from flowalign.models.analytic import GaussianMixtureFlow
from flowalign.rewards.ladder import RewardLadder
from flowalign.sampling.rollout import complete, rollout
from flowalign.sampling.schedule import linear_sigmas, noise_table, window_mask
from flowalign.sampling.tree import TreeSpec, tree_rollout

T = 4


@pytest.fixture(scope="module")
def model():
    g = torch.Generator().manual_seed(0)
    return GaussianMixtureFlow(2 * torch.randn(3, 4, generator=g), torch.tensor([0.5, 0.7, 0.3]))


C = torch.tensor([1.0, -2.0, 0.5, 3.0])


def reward(images, prompts, **metadata):  # "decode" of the analytic model is the identity
    return images @ C


def make(model, levels, b=2, keep_x0=True, shared_noise=False, seed=1):
    cond = model.encode(["p"] * b)
    x = model.initial_noise(1 if shared_noise else b, generator=torch.Generator().manual_seed(seed))
    x = x.repeat(b, 1) if shared_noise else x
    ro = rollout(
        model,
        cond,
        x,
        linear_sigmas(T),
        "flow_sde",
        levels,
        generator=torch.Generator().manual_seed(seed + 1),
        keep_x0=keep_x0,
    )
    return ro, cond


def separate(model, ro, cond, **kw):
    """Every state completed on its own: the ladder's definition, computed naively."""
    out = torch.empty(ro.latents.shape[0], T + 1)
    for j in range(T + 1):
        x, _ = complete(model, cond, ro.latents[:, j], ro.sigmas, j, **kw)
        out[:, j] = reward(x, None)
    return out


@pytest.mark.parametrize("kw", [{}, {"stride": 2}, {"num_steps": 2}])
def test_ladder_equals_separate_completions(model, kw):
    ro, cond = make(model, noise_table(T, 0.7), b=3)
    out = RewardLadder(model, reward, **kw)(ro, cond)
    assert torch.allclose(out.rewards, separate(model, ro, cond, **kw), atol=1e-5)


def test_x0_mode_is_one_step_prediction(model):
    ro, cond = make(model, noise_table(T, 0.7), keep_x0=False)
    out = RewardLadder(model, reward, mode="x0")(ro, cond)
    x0 = [ro.latents[:, j] - ro.sigmas[j] * model.velocity(ro.latents[:, j], ro.sigmas[j], cond) for j in range(T)]
    want = torch.stack([reward(x, None) for x in x0 + [ro.latents[:, T]]], 1)
    assert torch.allclose(out.rewards, want, atol=1e-5)
    assert out.nfe == 2 * T  # one velocity per non-final state (no stored x0_preds)
    ro, cond = make(model, noise_table(T, 0.7), keep_x0=True)
    assert RewardLadder(model, reward, mode="x0")(ro, cond).nfe == 0  # the rollout's x0_preds are reused


def test_ladder_nfe_hand_counted(model):
    # Flow-GRPO noise table: steps 0..2 SDE, step 3 ODE. Naive: 2 samples x (4+3+2+1) = 20.
    ro, cond = make(model, noise_table(T, 0.7))
    out = RewardLadder(model, reward)(ro, cond)
    # states 0,1,2 need 4,3,2 steps, minus the first step whose velocity the rollout already has:
    # 3+2+1 = 6 per sample; state 3's completion is the rollout's last (ODE) step = the final image,
    # so 4 distinct states per sample are scored (0, 1, 2, final) and 1 of 5 is shared.
    assert (out.naive_nfe, out.nfe, out.scored, out.reused) == (20, 12, 8, 2)
    assert torch.equal(out.rewards[:, 3], out.rewards[:, 4])
    ro_nox, cond = make(model, noise_table(T, 0.7), keep_x0=False)
    assert RewardLadder(model, reward)(ro_nox, cond).nfe == 2 * (4 + 3 + 2)  # no velocity to reuse
    # stride 2: grids [0,2,4], [1,3,4], [2,4] -> 2, 2, 1 steps, minus the reused first step: 1+1+0
    assert RewardLadder(model, reward, stride=2)(ro, cond).nfe == 2 * 2


def test_ode_steps_share_completions(model):
    # only step 1 stochastic: state 0's completion passes through state 1; states 2, 3 lead to the
    # final image by ODE steps. Only state 1 is completed: 3 steps - 1 reused = 2 per sample.
    levels = noise_table(T, 0.7, window_mask(T, 1, start=1))
    ro, cond = make(model, levels)
    out = RewardLadder(model, reward)(ro, cond)
    assert out.nfe == 2 * 2 and out.scored == 2 * 2  # states 1 and final scored per sample
    r = out.rewards
    assert torch.equal(r[:, 0], r[:, 1]) and torch.equal(r[:, 2], r[:, 4]) and torch.equal(r[:, 3], r[:, 4])
    assert torch.allclose(r, separate(model, ro, cond), atol=1e-5)  # sharing is exact, not an approximation


def test_shared_initial_noise_and_cache(model):
    ro, cond = make(model, noise_table(T, 0.7), b=4, shared_noise=True)
    lad = RewardLadder(model, reward)
    out = lad(ro, cond)
    assert out.nfe == 4 * 6 - 3 * 3  # 6 per sample (as above); the shared state 0 (3 NFE) once, not 4 times
    again = lad(ro, cond, steps=[0, 2])
    assert again.nfe == 0 and again.scored == 0  # all served from the cache
    assert torch.equal(again.rewards[:, [0, 2]], out.rewards[:, [0, 2]]) and again.rewards[:, 1].isnan().all()


def test_tree_node_rewards(model):
    cond = model.encode(["p", "q"])
    x = model.initial_noise(2, generator=torch.Generator().manual_seed(3))
    tree = tree_rollout(
        model,
        cond,
        x,
        linear_sigmas(T),
        TreeSpec((0, 2), 2),
        "flow_sde",
        noise_table(T, 0.7),
        generator=torch.Generator().manual_seed(4),
    )
    out = RewardLadder(model, reward).tree(tree, cond)
    want = torch.stack(
        [
            reward(
                complete(
                    model, cond.select([int(tree.root[n])]), tree.latents[n : n + 1], tree.sigmas, int(tree.step[n])
                )[0],
                None,
            )[0]
            for n in range(tree.num_nodes)
        ]
    )
    assert torch.allclose(out.rewards, want, atol=1e-5)
    # nodes at step 3 (ODE edge to the leaves) share the leaves' rewards: only steps 0..2 are completed
    assert out.nfe == sum(T - int(s) for s in tree.step if s < 3)


def test_ladder_bad_input(model):
    ro, cond = make(model, noise_table(T, 0.7))
    with pytest.raises(ValueError, match="must lie in 0..4"):
        RewardLadder(model, reward)(ro, cond, steps=[5])
    with pytest.raises(ValueError, match="prompts"):
        RewardLadder(model, reward)(ro, cond, prompts=["only one"])
    with pytest.raises(ValueError, match="mode"):
        RewardLadder(model, reward, mode="sde")
