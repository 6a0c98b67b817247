"""Hand-computed credit variants (issue 6): DenseGRPO, psi(t) calibration, TP-GRPO, G^2RPO, BranchGRPO /
TreeGRPO, Euphonium guided SDE and dual-reward credit, config-time checks. Arithmetic in comments."""

import pytest
import torch

from flowalign.credit import CREDIT, check_credit
from flowalign.credit.checks import (
    check_granular,
    check_guidance,
    check_pruning,
    check_tree_spec,
    check_window,
)
from flowalign.credit.dense import (
    calibrate_noise_table,
    dense_grpo,
    flow_sde_psi,
    ladder_gain_measure,
    ladder_steps,
    psi_to_noise_levels,
    step_gains,
)
from flowalign.credit.granular import g2rpo, granular_grid, shared_log_prob, singular_sde_rollout
from flowalign.credit.guided import (
    dual_reward_advantages,
    euphonium,
    guided_rollout,
    kl_optimal_kappa,
    x0_process_reward,
)
from flowalign.credit.tree import (
    branch_grpo,
    fuse_rewards,
    slide_depths,
    tree_grpo,
    tree_to_batch,
)
from flowalign.credit.turning_point import tp_grpo, turning_points
from flowalign.models.analytic import GaussianMixtureFlow
from flowalign.rewards.base import Reward
from flowalign.sampling.rollout import complete, log_prob_at, rollout
from flowalign.sampling.schedule import linear_sigmas, shifted_sigmas
from flowalign.sampling.sde import dance_sde, flow_sde
from flowalign.sampling.tree import TreeSpec, edge_log_prob, tree_rollout
from flowalign.sampling.windows import geometric_window, geometric_window_probs
from flowalign.train.losses import dual_reward_loss
from flowalign.types import TreeRollout

close = torch.testing.assert_close
MIX = dict(means=[[-2.0, 0.5], [1.5, -1.0]], stds=[[0.5, 0.3], [0.4, 0.6]])


@pytest.fixture(scope="module")
def mix():
    return GaussianMixtureFlow(**MIX)


# --- DenseGRPO --------------------------------------------------------------------------------------
def test_dense_gains_and_per_step_normalisation_by_hand():
    # one group of 3, T = 2; gains d_j = ladder[j+1] - ladder[j]: [1, 2], [2, 0], [0, 3]
    ladder = torch.tensor([[0.0, 1, 3], [0, 2, 2], [1, 1, 4]])
    close(step_gains(ladder), torch.tensor([[1.0, 2], [2, 0], [0, 3]]))
    out = dense_grpo(torch.zeros(3), torch.zeros(3), torch.ones(2, dtype=torch.bool), ladder=ladder, eps=0.0)
    # step 0: [1, 2, 0], mean 1, pop var 2/3 -> std .8164966: [0, 1.2247449, -1.2247449]
    # step 1: [2, 0, 3], mean 5/3, devs [1/3, -5/3, 4/3], var 42/27 -> std 1.2472191:
    #         [.2672612, -1.3363062, 1.0690450]
    close(out.advantages, torch.tensor([[0.0, 0.2672612], [1.2247449, -1.3363062], [-1.2247449, 1.0690450]]))
    assert out.mask.all()
    # "Dense Reward (Baseline)": step 0 uses ladder[:, 1] = [1, 2, 1], mean 4/3, var 6/27 -> std .4714045
    base = dense_grpo(
        torch.zeros(3), torch.zeros(3), torch.tensor([True, False]), ladder=ladder, reward="level", eps=0.0
    )
    close(base.advantages[:, 0], torch.tensor([-0.7071068, 1.4142136, -0.7071068]))
    assert not base.mask[:, 1].any() and (base.advantages[:, 1] == 0).all()


def test_dense_flat_group_masked_and_missing_ladder_entries():
    # group 1 has a flat ladder: zero gains, zero std -> its pairs leave the loss
    ladder = torch.tensor([[0.0, 1, 2], [0, 3, 2], [2, 2, 2], [2, 2, 2]])
    out = dense_grpo(torch.zeros(4), torch.tensor([0, 0, 1, 1]), torch.ones(2, dtype=torch.bool), ladder=ladder)
    assert out.mask[:2].all() and not out.mask[2:].any() and out.stats["zero_std_frac"] == 0.5
    # an untrained step may be missing (NaN) from the ladder; a trained one may not
    ladder[:, 2] = float("nan")
    ok = dense_grpo(torch.zeros(4), torch.tensor([0, 0, 1, 1]), torch.tensor([True, False]), ladder=ladder)
    assert torch.isfinite(ok.advantages).all()
    with pytest.raises(ValueError, match=r"ladder\[0, 2\] is not finite"):
        dense_grpo(torch.zeros(4), torch.tensor([0, 0, 1, 1]), torch.ones(2, dtype=torch.bool), ladder=ladder)
    # states to request from the ladder for a window of steps 2..4 of T = 8: 2..5 and the final 8
    assert ladder_steps(torch.tensor([0, 0, 1, 1, 1, 0, 0, 0]).bool()) == [2, 3, 4, 5, 8]
    with pytest.raises(ValueError, match="one trained-step mask per group"):
        dense_grpo(
            torch.zeros(2), torch.zeros(2), torch.tensor([[True, False], [True, True]]), ladder=torch.zeros(2, 3)
        )


# --- psi(t) calibration (DenseGRPO Algorithm 1) -------------------------------------------------------
def test_calibration_by_hand():
    # column 0: 2 pos / 2 neg -> |2-2| = 0 < 2: +.01; column 1: 4 neg -> 4 >= 2: -.01;
    # column 2: 2 pos / 1 neg -> 1 < 2: +.01 (zeros count as neither)
    gains = torch.tensor([[1.0, -1, 1], [-1, -1, 1], [1, -1, -1], [-1, -1, 0]])
    cal = calibrate_noise_table(lambda psi: gains, torch.tensor([0.5, 0.5, 0.5]), iterations=3)
    close(cal.psi, torch.tensor([0.53, 0.47, 0.53]))
    close(cal.imbalance[0], torch.tensor([0.0, 4.0, 1.0]))
    assert cal.history.shape == (4, 3)
    # frozen entries stay, psi never goes below lo = 0
    cal = calibrate_noise_table(
        lambda psi: gains, torch.tensor([0.5, 0.005, 0.5]), iterations=1, steps=torch.tensor([True, True, False])
    )
    close(cal.psi, torch.tensor([0.51, 0.0, 0.5]))


def test_calibration_settles_at_the_largest_balanced_noise():
    # gains become one-sided once psi > .6: the table climbs by .02 to just above .6 then oscillates
    def measure(psi):
        one_sided = psi > 0.6
        col = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None]
        return torch.where(one_sided[None], -col.abs(), col.expand(4, psi.numel()))

    cal = calibrate_noise_table(measure, torch.tensor([0.55, 0.3]), iterations=30, eps2=0.02)
    assert ((cal.psi - 0.6).abs() <= 0.02 + 1e-5).all()  # within one eps2 of the threshold
    assert (cal.history[-6:, 0] > 0.56).all()


def test_psi_is_the_sde_diffusion(mix):
    # dance_sde with g = psi_j reproduces flow_sde at a = .7 (g = .7 sqrt(sigma / (1 - sigma)))
    sigmas = shifted_sigmas(6)
    psi = flow_sde_psi(0.7, sigmas)
    close(psi_to_noise_levels(psi, sigmas, "flow_sde"), torch.full((6,), 0.7))
    x, v = torch.randn(3, 2), torch.randn(3, 2)
    for j in range(5):
        a = flow_sde(x, v, sigmas[j], sigmas[j + 1], 0.7, noise=torch.zeros(3, 2))
        b = dance_sde(x, v, sigmas[j], sigmas[j + 1], float(psi[j]), noise=torch.zeros(3, 2))
        close(a.mean, b.mean, rtol=1e-5, atol=1e-6)
        close(a.std, b.std, rtol=1e-5, atol=1e-7)
    # the measure rolls out with the converted table: same gains as a flow_sde rollout at .7
    cond, x0 = mix.encode(["p"] * 4), torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    first = lambda r, c: r.latents[..., 0]  # noqa: E731  any [N, T+1] table works as a "ladder"
    got = ladder_gain_measure(
        mix, cond, x0, sigmas, first, step="flow_sde", generator=torch.Generator().manual_seed(1)
    )(psi)
    ref = rollout(
        mix,
        cond,
        x0,
        sigmas,
        "flow_sde",
        psi_to_noise_levels(psi, sigmas, "flow_sde"),
        generator=torch.Generator().manual_seed(1),
    )
    close(got, step_gains(ref.latents[..., 0]))


# --- TP-GRPO ------------------------------------------------------------------------------------------
LADDERS = torch.tensor(
    [
        [1.0, 0, 2, 3, 2.5],  # d = [-1, 2, 1, -.5], Delta = 1.5, s = [-, +, +, -]; k=2: s1<0, s2>0, R4-R2=.5>0
        [0.0, 2, 1, 3, 4],  # d = [2, -1, 2, 1], Delta = 4; k=1 first-step (2 * (4-2) > 0); k=3: s2<0, s3>0, 4-3>0
        [0.0, -1, 3, 1, 2],  # d = [-1, 4, -2, 1], Delta = 2; k=2 flips but R4-R2 = -1 < 0; k=4 last step
        [1.0, 1, 1, 1, 1],  # all flat: Delta = 0, no sign anywhere
        [0.0, 1, 1, 2, 2],  # ties: d = [1, 0, 1, 0]; k=1 is a TP; k=3 follows a zero gain (s2 = 0, not < 0)
    ]
)


def test_turning_points_with_consistency_by_hand():
    tp = turning_points(LADDERS, torch.ones(4, dtype=torch.bool), balance=False)
    assert tp.turning.tolist() == [
        [False, True, False, False],
        [True, False, True, False],
        [False, False, False, False],
        [False] * 4,
        [True, False, False, False],
    ]
    # r = R4 - R_{k-1} at turning points, d elsewhere:
    # row 0: k=2 -> 2.5 - 0 = 2.5; row 1: k=1 -> 4 - 0 = 4, k=3 -> 4 - 1 = 3; row 4: k=1 -> 2 - 0 = 2
    close(tp.rewards, torch.tensor([[-1.0, 2.5, 1, -0.5], [4, -1, 3, 1], [-1, 4, -2, 1], [0, 0, 0, 0], [2, 0, 1, 0]]))
    close(tp.delta, torch.tensor([1.5, 4, 2, 0, 2]))
    # the last step is never a turning point under the constraint (R_n - R_n = 0)
    assert not tp.turning[:, -1].any()
    # first_step=False drops the k=1 rule: row 1 k=1 reverts to d_1 = 2
    assert turning_points(LADDERS, torch.ones(4, dtype=torch.bool), balance=False, first_step=False).rewards[1, 0] == 2


def test_turning_points_without_constraint_and_any_flip():
    tp = turning_points(LADDERS, torch.ones(4, dtype=torch.bool), balance=False, constraint=False)
    # row 2: k=2 (s1<0, s2>0) -> R4 - R1 = 2 - (-1) = 3; k=4 (s3<0, s4>0) -> R4 - R3 = 1 (the last step can
    # turn without the constraint); k=1 needs s1 > 0 -> row 2 (s1 = -1) no
    assert tp.turning[2].tolist() == [False, True, False, True]
    close(tp.rewards[2], torch.tensor([-1.0, 3, -2, 1]))
    flip = turning_points(LADDERS, torch.ones(4, dtype=torch.bool), balance=False, constraint=False, any_flip=True)
    # any sign flip d_{k-1} d_k < 0: row 1 k=2 (2 * -1 < 0) -> R4 - R1 = 4 - 2 = 2; row 2 k=3 -> 2 - 3 = -1
    close(flip.rewards[1], torch.tensor([4.0, 2, 3, 1]))
    close(flip.rewards[2], torch.tensor([-1.0, 3, -1, 1]))


def test_turning_point_window_and_reference_baseline():
    # T = 5, window = steps 1..3 (ODE before and after): R0 = ladder[1] = 5, R = [6, 4, 7], Rn = ladder[5] = 7
    ladder, mask = torch.tensor([[5.0, 5, 6, 4, 7, 7]]), torch.tensor([False, True, True, True, False])
    tp = turning_points(ladder, mask)
    # d = [1, -2, 3], Delta = 2; k=1: 1 * (7 - 6) > 0 -> TP with r = 7 - 5 = 2; k=3 is the last step -> d = 3
    close(tp.rewards, torch.tensor([[0.0, 2, -2, 3, 0]]))
    # reference code: R0 from an ODE image of a *different* noise (reward 8): d1 = 6 - 8 = -2, Delta = -1;
    # k=1: -2 * (7 - 6) < 0 -> no TP, all steps keep d
    close(turning_points(ladder, mask, baseline=torch.tensor([8.0])).rewards, torch.tensor([[0.0, -2, -2, 3, 0]]))
    with pytest.raises(ValueError, match="not contiguous"):
        turning_points(ladder, torch.tensor([True, False, True, False, False]))


def test_turning_point_balancing_by_hand():
    # every row has a first-step turning point; Delta = [2, 3, 3, -2] -> 3 positive, 1 negative
    ladder = torch.tensor([[0.0, 1, 2], [0, 2, 3], [0, 1, 3], [0, -1, -2]])
    tp = turning_points(ladder, torch.ones(2, dtype=torch.bool))
    # keep min(3, 1) = 1 per side by largest |Delta|: rows 1 and 2 tie at 3 -> the earlier row (1) stays;
    # rows 0 and 2 revert to d_1 = 1
    assert tp.turning[:, 0].tolist() == [False, True, False, True]
    assert tp.demoted[:, 0].tolist() == [True, False, True, False]
    close(tp.rewards, torch.tensor([[1.0, 1], [3, 1], [1, 2], [-2, -1]]))
    # balancing batches {0, 1} (both positive: nothing dropped) and {2, 3} (one each: nothing dropped)
    per = turning_points(ladder, torch.ones(2, dtype=torch.bool), balance_ids=torch.tensor([0, 0, 1, 1]))
    close(per.rewards, torch.tensor([[2.0, 1], [3, 1], [3, 2], [-2, -1]]))
    # advantages: step 0 of the balanced rewards [1, 3, 1, -2]: mean .75, pop var 12.75 / 4 = 3.1875,
    # std 1.7853571 -> [.1400280, 1.2602521, .1400280, -1.5403080]
    adv = tp_grpo(torch.zeros(4), torch.zeros(4), torch.ones(2, dtype=torch.bool), ladder=ladder, eps=0.0)
    close(adv.advantages[:, 0], torch.tensor([0.1400280, 1.2602521, 0.1400280, -1.5403080]))
    assert adv.stats["turning_points"] == 2 and adv.stats["turning_demoted"] == 2


def test_tp_grpo_all_flat_group_is_masked():
    # group 1: row 2 d = [1, 1], k=1 turns -> r = [2, 1]; row 3 d = [3, -2], no turn -> r = [3, -2]
    ladder = torch.tensor([[1.0, 1, 1], [1, 1, 1], [0, 1, 2], [0, 3, 1]])
    out = CREDIT["turning_point"].fn(
        torch.zeros(4), torch.tensor([0, 0, 1, 1]), torch.ones(2, dtype=torch.bool), ladder=ladder
    )
    assert not out.mask[:2].any() and (out.advantages[:2] == 0).all() and out.mask[2:].all()


# --- G^2RPO ---------------------------------------------------------------------------------------------
def test_g2rpo_sums_z_scores_over_granularities_per_step():
    # rows 0-2: prompt 0, step j=1; rows 3-5: prompt 0, step j=2 (a separate normalisation group)
    granular = torch.tensor([[1.0, 4], [2, 4], [3, 7], [0, 0], [1, 1], [2, 2]])
    mask = torch.zeros(6, 3, dtype=torch.bool)
    mask[:3, 1] = True
    mask[3:, 2] = True
    out = g2rpo(torch.zeros(6), torch.zeros(6, dtype=torch.long), mask, granular=granular, eps=0.0)
    # j=1, lambda=1: [1, 2, 3] unbiased std 1 -> [-1, 0, 1]; lambda=2: [4, 4, 7], mean 5, std sqrt(3)
    # -> [-.5773503, -.5773503, 1.1547005]; sum -> [-1.5773503, -.5773503, 2.1547005]
    # j=2: both columns [0, 1, 2] -> [-1, 0, 1] each, sum [-2, 0, 2]
    close(out.advantages[mask], torch.tensor([-1.5773503, -0.5773503, 2.1547005, -2, 0, 2]))
    assert (out.advantages[~mask] == 0).all()
    # two reward models, the second = 2 x the first: identical z-scores, weights (1, .5) -> 1.5 x
    two = g2rpo(
        torch.zeros(6),
        torch.zeros(6),
        mask,
        granular=torch.stack([granular, 2 * granular], -1),
        reward_weights=[1.0, 0.5],
        eps=0.0,
    )
    close(two.advantages, 1.5 * out.advantages)
    with pytest.raises(ValueError, match="exactly one step"):
        g2rpo(torch.zeros(6), torch.zeros(6), torch.ones(6, 3, dtype=torch.bool), granular=granular)


def test_granular_grids_by_hand():
    # paper: every lambda-th index from the post-SDE state, ending at T (x0_pred at the last point)
    assert granular_grid(6, 3, 2) == [3, 5, 6] and granular_grid(6, 3, 3) == [3, 6]
    assert granular_grid(10, 1, 3) == [1, 4, 7, 10]
    # reference code: sigma[:j+2] + sigma[j+2::lambda]; x0 at the second-to-last point when the last is not 0
    # T=10, j=0: [1] + [2, 5, 8] -> last 8 != 10 -> [1, 2, 5] + [10]
    assert granular_grid(10, 1, 3, "reference") == [1, 2, 5, 10]
    assert granular_grid(6, 3, 2, "reference") == [3, 4, 6]


def test_singular_sde_rollout_on_the_analytic_flow(mix):
    sigmas, j, k = linear_sigmas(6), 2, 4
    cond, x = mix.encode(["a", "b"]), torch.randn(2, 2, generator=torch.Generator().manual_seed(3))
    mix.nfe = 0
    sr = singular_sde_rollout(mix, cond, x, sigmas, j, k, "flow_sde", 0.7, torch.Generator().manual_seed(4))
    # NFE: anchor 2 steps x 2 + one shared velocity x 2 + branch paths (stride 1: 3 steps, 2: [3,5,6] 2 steps,
    # 3: [3,6] 1 step) x 8 rows = 4 + 2 + 24 + 16 + 8 = 54
    assert sr.nfe == 54 and sr.rollout.latents.shape == (8, 7, 2)
    ode = rollout(mix, cond, x, sigmas, "ode")
    assert torch.equal(sr.rollout.latents[:, : j + 1], ode.latents[:, : j + 1].repeat_interleave(k, 0))
    assert sr.rollout.noise_mask.tolist() == [False, False, True, False, False, False]
    assert sr.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # the recorded log-prob is recomputed exactly, with or without the shared-velocity shortcut
    close(log_prob_at(mix, sr.cond, sr.rollout, j).log_prob, sr.rollout.log_probs[:, j], atol=1e-6, rtol=0)
    close(shared_log_prob(mix, cond, sr).log_prob, sr.rollout.log_probs[:, j], atol=1e-6, rtol=0)
    # each stride's image is the ODE completion on its sub-grid
    xj1 = sr.rollout.latents[:, j + 1]
    assert torch.equal(sr.finals[0], complete(mix, sr.cond, xj1, sigmas, j + 1)[0])
    assert torch.equal(sr.finals[0], sr.rollout.final)
    assert torch.equal(sr.finals[1], complete(mix, sr.cond, xj1, sigmas, j + 1, stride=2)[0])
    # reusing the anchor of an earlier call costs no anchor NFE: 2 + 3*8 + 2*8 + 1*8 = 50 at the same j
    again = singular_sde_rollout(
        mix, cond, x, sigmas, j, k, generator=torch.Generator().manual_seed(4), anchor=sr.anchor
    )
    assert again.nfe == 50 and torch.equal(again.finals, sr.finals)


# --- trees ------------------------------------------------------------------------------------------------
def hand_tree() -> TreeRollout:
    """0 -split-> 1, 2 -split-> (3, 4), (5, 6) -> leaves 7, 8, 9, 10 (T = 3; last split at step 1)."""
    parent = torch.tensor([-1, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6])
    step = torch.tensor([0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    lp = torch.tensor([0.0, -1, -2, 0.5, -0.5, 0, 0, -1, -1, -1, -1])
    n = parent.numel()
    return TreeRollout(
        latents=torch.randn(n, 2, generator=torch.Generator().manual_seed(0)),
        parent=parent,
        step=step,
        depth=torch.tensor([0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2]),
        root=torch.zeros(n, dtype=torch.long),
        log_prob=lp,
        mean=None,
        std=torch.where(parent >= 0, 0.1, 0.0),
        noise_level=torch.where(parent >= 0, 0.7, 0.0),
        trainable=parent >= 0,
        sigmas=linear_sigmas(3),
        step_kind="flow_sde",
    )


LEAF_R = torch.tensor([1.0, 3, 2, 6])


def test_reward_fusion_by_hand():
    tree = hand_tree()
    # mean: node 1 = (1 + 3)/2 = 2, node 2 = (2 + 6)/2 = 4, root = 3, chains keep their leaf
    close(fuse_rewards(tree, LEAF_R), torch.tensor([3.0, 2, 4, 1, 3, 2, 6, 1, 3, 2, 6]))
    # path softmax (paper, beta=1): path log-probs root->leaf: 7: -1+.5-1 = -1.5, 8: -2.5, 9: 10: -3
    # node 1: softmax(-1.5, -2.5) = (e/(e+1), 1/(e+1)) = (.7310586, .2689414) -> .7310586 + 3 * .2689414
    p = fuse_rewards(tree, LEAF_R, "path_softmax")
    w = torch.softmax(torch.tensor([-1.5, -2.5, -3.0, -3.0]), 0)
    close(p[1], torch.tensor(0.7310586 + 3 * 0.2689414))
    close(p[2], torch.tensor(4.0))
    close(p[0], (w * LEAF_R).sum())  # root: all four leaves, softmax of the full paths
    # edge softmax (code): root = softmax(-1, -2) over its children's fused rewards (1.5378828, 4)
    e = fuse_rewards(tree, LEAF_R, "edge_softmax")
    close(e[1], p[1])
    close(e[0], torch.tensor(0.7310586 * 1.5378828 + 0.2689414 * 4))
    assert abs(float(e[0] - p[0])) > 0.05  # the two weightings differ at the root
    # beta = 0 is the plain mean
    close(fuse_rewards(tree, LEAF_R, "path_softmax", beta=0.0), fuse_rewards(tree, LEAF_R))


def test_branchgrpo_depthwise_advantages_and_pruning():
    tree = hand_tree()
    out = CREDIT["branchgrpo"].fn(tree, LEAF_R, eps=0.0)
    # depth 1: [2, 4], unbiased std sqrt(2) -> -+.7071068 (always, for two nodes)
    # depth 2 and 3: [1, 3, 2, 6], mean 3, unbiased var 14/3 -> std 2.1602469: [-.9258201, 0, -.4629100, 1.3887301]
    d2 = [-0.9258201, 0.0, -0.4629100, 1.3887301]
    close(out.advantages, torch.tensor([0.0, -0.7071068, 0.7071068] + d2 + d2))
    assert out.mask.tolist() == [False] + [True] * 10
    # depth pruning {3}: the edges into the leaves leave the loss
    assert torch.nonzero(~branch_grpo(tree, LEAF_R, prune_depths={3}).mask).flatten().tolist() == [0, 7, 8, 9, 10]
    # width "parent_top" (ratio .5): per split parent keep the better branch: 1 -> {3 (-.93), 4 (0)} keeps 4,
    # 2 -> {5 (-.46), 6 (1.39)} keeps 6: last-layer edges 7 and 9 dropped
    top = branch_grpo(tree, LEAF_R, width_pruning="parent_top")
    assert torch.nonzero(~top.mask).flatten().tolist() == [0, 7, 9]
    # "extreme": last-layer edges sorted [10, 8, 9, 7]; keep max(2, int(4 * .5)) = 2: best 10, worst 7
    ext = branch_grpo(tree, LEAF_R, width_pruning="extreme")
    assert torch.nonzero(~ext.mask).flatten().tolist() == [0, 8, 9]
    assert slide_depths([15, 16, 17], iteration=5, interval=2, stop_depth=10) == (13, 14, 15)
    assert slide_depths([15, 16, 17], iteration=50, interval=2, stop_depth=10) == (10, 11, 12)
    # a single-node depth (a chain before the first split) gets 0 and carries no signal
    chain = tree_rollout(
        GaussianMixtureFlow(**MIX),
        GaussianMixtureFlow(**MIX).encode(["p"]),
        torch.zeros(1, 2),
        linear_sigmas(3),
        TreeSpec(split_steps=(1,)),
        "flow_sde",
        0.7,
        generator=torch.Generator().manual_seed(0),
    )
    ch = branch_grpo(chain, torch.tensor([0.0, 1.0]))
    assert ch.advantages[1] == 0 and not ch.mask[1]


def test_treegrpo_bottom_up_by_hand():
    out = tree_grpo(hand_tree(), LEAF_R, eps=0.0)
    # leaves: [1, 3, 2, 6], mean 3, pop std sqrt(3.5) = 1.8708287 -> [-1.0690450, 0, -.5345225, 1.6035675]
    # chains (3..6) copy their single child; node 1: softmax(.5, -.5) = (.7310586, .2689414) . (-1.069045, 0)
    # = -.7815337; node 2: softmax(0, 0) -> (-.5345225 + 1.6035675)/2 = .5345225
    leaf = [-1.0690450, 0.0, -0.5345225, 1.6035675]
    close(out.advantages, torch.tensor([0.0, -0.7815337, 0.5345225] + leaf + leaf))
    # window starts i = 0..T-w-1 with Pr ~ r^i: T=4, w=2, r=.5 -> (.5, .25) / (1 - .25) = (2/3, 1/3)
    close(geometric_window_probs(4, 2, 0.5), torch.tensor([2 / 3, 1 / 3]))
    starts = torch.stack([geometric_window(4, 2, generator=torch.Generator().manual_seed(s)) for s in range(300)])
    assert not starts[:, 3].any() and 0.55 < starts[:, 0].float().mean() < 0.78  # start 0 w.p. 2/3
    # two rewards with weights .8 / .2: the second is the negated first -> (.8 - .2) x the single advantages
    two = tree_grpo(hand_tree(), torch.stack([LEAF_R, -LEAF_R], 1), reward_weights=[0.8, 0.2], eps=0.0)
    close(two.advantages, 0.6 * out.advantages)


def test_tree_to_batch_trains_every_edge_once(mix):
    tree = hand_tree()
    batch = tree_to_batch(tree, branch_grpo(tree, LEAF_R))
    # paths [1,3,7], [1,4,8], [2,5,9], [2,6,10]: the shared edges into 1 and 2 train on the first path only
    assert batch.nodes.tolist() == [[1, 3, 7], [1, 4, 8], [2, 5, 9], [2, 6, 10]]
    assert batch.advantages.mask.tolist() == [[True] * 3, [False, True, True], [True] * 3, [False, True, True]]
    assert int(batch.advantages.mask.sum()) == 10
    # a real tree: the flat layout's recomputed log-probs equal the stored edge log-probs
    cond = mix.encode(["a", "b"])
    real = tree_rollout(
        mix,
        cond,
        torch.randn(2, 2, generator=torch.Generator().manual_seed(5)),
        linear_sigmas(4),
        TreeSpec(split_steps=(0, 2)),
        "flow_sde",
        0.7,
        generator=torch.Generator().manual_seed(6),
    )
    leaf_r = real.latents[real.leaves, 0]
    tadv = branch_grpo(real, leaf_r)
    tb = tree_to_batch(real, tadv)
    assert int(tb.advantages.mask.sum()) == int(tadv.mask.sum())
    rcond = cond.select(tb.rows)
    for j in range(3):  # the last step's std is 0 (ODE), nothing to train there
        close(log_prob_at(mix, rcond, tb.rollout, j).log_prob, real.log_prob[tb.nodes[:, j]], atol=1e-6, rtol=0)
    nodes, adv = tadv.edges()
    close(edge_log_prob(mix, cond, real, nodes).log_prob, real.log_prob[nodes], atol=1e-6, rtol=0)
    # a tree whose noise level differs within a step cannot be a flat Rollout
    odd = hand_tree()
    odd.noise_level[3] = 0.9
    with pytest.raises(ValueError, match="edge_log_prob"):
        tree_to_batch(odd, branch_grpo(odd, LEAF_R))


# --- Euphonium ---------------------------------------------------------------------------------------------
C = torch.tensor([1.0, -2.0])


def linear_prm(x, ctx):  # R(x) = c . x, grad = c
    return x @ C


linear_prm.differentiable = True


@pytest.mark.parametrize("step", ["flow_sde", "dance_sde"])
def test_kappa_zero_is_the_unguided_sde_bit_for_bit(mix, step):
    cond, x = mix.encode(["p"] * 5), torch.randn(5, 2, generator=torch.Generator().manual_seed(7))
    sig = shifted_sigmas(8)
    ref = rollout(mix, cond, x, sig, step, 0.7, generator=torch.Generator().manual_seed(8))
    got = guided_rollout(mix, cond, x, sig, linear_prm, 0.0, step, 0.7, generator=torch.Generator().manual_seed(8))
    assert torch.equal(got.rollout.latents, ref.latents) and torch.equal(got.rollout.log_probs, ref.log_probs)
    # process scores R(x_j) = c . x_j on the guided (SDE) steps, 0 on the last (ODE) step
    close(got.process[:, :7], ref.latents[:, :7] @ C)
    assert (got.process[:, 7] == 0).all() and got.guided.tolist() == [True] * 7 + [False]


def test_guided_drift_and_unguided_log_prob(mix):
    cond, x = mix.encode(["p"] * 3), torch.randn(3, 2, generator=torch.Generator().manual_seed(9))
    sig, kappa = linear_sigmas(4), 0.5
    ref = rollout(mix, cond, x, sig, "dance_sde", 0.3, generator=torch.Generator().manual_seed(1))
    got = guided_rollout(
        mix, cond, x, sig, linear_prm, kappa, "dance_sde", 0.3, generator=torch.Generator().manual_seed(1)
    )
    # first step: same state, same noise, mean shifted by kappa |dt| c = .5 * .25 * (1, -2) = (.125, -.25)
    close(got.rollout.latents[:, 1] - ref.latents[:, 1], torch.tensor([[0.125, -0.25]]).expand(3, 2))
    # stored log-probs are under the unguided kernel: recomputing without drift gives them back,
    # while the guided kernel's own log-prob differs
    guided = guided_rollout(
        mix,
        cond,
        x,
        sig,
        linear_prm,
        kappa,
        "dance_sde",
        0.3,
        logprob="guided",
        generator=torch.Generator().manual_seed(1),
    )
    for j in range(3):
        close(log_prob_at(mix, cond, got.rollout, j).log_prob, got.rollout.log_probs[:, j], atol=1e-6, rtol=0)
    assert (guided.rollout.log_probs[:, :3] - got.rollout.log_probs[:, :3]).abs().min() > 1e-3
    # per-sample normalised gradient and restricted steps: drift norm kappa |dt| on step 1 only
    norm = guided_rollout(
        mix,
        cond,
        x,
        sig,
        linear_prm,
        kappa,
        "dance_sde",
        0.3,
        steps=[1],
        normalize=True,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(norm.rollout.latents[:, 1], ref.latents[:, 1])
    assert norm.guided.tolist() == [False, True, False, False] and (norm.process[:, [0, 2, 3]] == 0).all()

    # an image reward through x0 = x - sigma v (v fixed, decode = identity here): same gradient c
    def image_reward(images, prompts):
        return images @ C

    image_reward.differentiable = True
    via_x0 = guided_rollout(
        mix,
        cond,
        x,
        sig,
        x0_process_reward(image_reward),
        kappa,
        "dance_sde",
        0.3,
        generator=torch.Generator().manual_seed(1),
    )
    close(via_x0.rollout.latents[:, 1], got.rollout.latents[:, 1])
    assert kl_optimal_kappa(0.25, 3.125) == pytest.approx(0.01)  # release: scale .01 <-> beta 3.125


def test_dual_reward_advantages_and_loss_by_hand():
    # outcome [1, 2, 3]: pop std .8164966 -> [-1.2247449, 0, 1.2247449] on both steps
    # process: step 0 unguided (all 0 -> zero std -> masked); step 1 [1, 2, 6]: mean 3, pop std 2.1602469
    # -> [-.9258201, -.4629100, 1.3887301]
    proc = torch.tensor([[0.0, 1], [0, 2], [0, 6]])
    d = dual_reward_advantages(
        torch.tensor([1.0, 2, 3]), torch.zeros(3), torch.ones(2, dtype=torch.bool), process=proc, eps=0.0
    )
    close(d["outcome"].advantages, torch.tensor([[-1.2247449] * 2, [0.0, 0.0], [1.2247449] * 2]))
    assert d["process"].mask.tolist() == [[False, True]] * 3
    close(d["process"].advantages[:, 1], torch.tensor([-0.9258201, -0.4629100, 1.3887301]))
    single = euphonium(
        torch.tensor([1.0, 2, 3]), torch.zeros(3), torch.ones(2, dtype=torch.bool), process=proc, eps=0.0
    )
    close(single.advantages[:, 1], torch.tensor([-2.1505650, -0.4629100, 2.6134750]))
    # two-term loss: A = (-1, 1) for both terms; log-ratios (.1, -.1), clip .05:
    # pair 0: max(1.1051709, 1.05) = 1.1051709; pair 1: max(-.9048374, -.95) = -.9048374; mean .1001668
    # total = 1 * .1001668 + .5 * .1001668 = .1502502
    two = dual_reward_advantages(
        torch.tensor([0.0, 1]),
        torch.zeros(2),
        torch.ones(1, dtype=torch.bool),
        process=torch.tensor([[0.0], [2.0]]),
        eps=0.0,
    )
    loss = dual_reward_loss(
        torch.tensor([[0.1], [-0.1]]), torch.zeros(2, 1), two["outcome"], two["process"], c_process=0.5, clip_range=0.05
    )
    assert loss.loss.item() == pytest.approx(0.1502502, abs=1e-6)


# --- bad input at config time ------------------------------------------------------------------------------
class FlatReward(Reward):
    name, differentiable = "flat", False

    def score(self, images, prompts, **metadata):
        return images.flatten(1).mean(1)


def test_config_time_errors(mix):
    with pytest.raises(ValueError, match=r"split_steps=\[0, 12\] must be step indices in \[0, 9\]"):
        check_tree_spec([0, 12], 2, 10)
    with pytest.raises(ValueError, match="strictly increasing"):
        check_tree_spec("0,6,3", 2, 10)
    with pytest.raises(ValueError, match=r"branch_factor=\[0, 0\] must be ints >= 1"):
        check_tree_spec([0, 3], 0, 10)
    assert check_tree_spec("0,3,6,9", 2, 20).num_leaves() == 16
    with pytest.raises(ValueError, match="SDE window of size 12 .* does not fit in 10 steps"):
        check_window(10, 12)
    with pytest.raises(ValueError, match=r"window range \[0, 3\) with size 4"):
        check_window(10, 4, 0, hi=3)
    with pytest.raises(ValueError, match="'flat' is not differentiable"):
        check_guidance(FlatReward(), 0.1)
    with pytest.raises(ValueError, match="does not say whether it is differentiable"):
        check_guidance(lambda x, ctx: x.sum(1), 0.1)
    check_guidance(lambda x, ctx: x.sum(1), 0.1, differentiable=True)
    nfe = mix.nfe
    with pytest.raises(ValueError, match="not differentiable"):  # refused before any model call
        guided_rollout(mix, mix.encode(["p"]), torch.zeros(1, 2), linear_sigmas(3), FlatReward(), 0.1)
    assert mix.nfe == nfe
    with pytest.raises(ValueError, match="returned no gradient"):
        guided_rollout(
            mix,
            mix.encode(["p"]),
            torch.zeros(1, 2),
            linear_sigmas(3),
            lambda x, ctx: x.detach().sum(1),
            0.1,
            differentiable=True,
        )
    with pytest.raises(ValueError, match="prune_depths"):
        check_pruning(10, prune_depths=[11])
    with pytest.raises(ValueError, match="must include 1"):
        check_granular(10, [0, 1], [2, 3], 12)
    with pytest.raises(ValueError, match="unknown credit 'dense_grpo'"):
        check_credit("dense_grpo")


def test_registries_take_the_trainer_keywords():
    """Integration is a dict lookup: every entry takes (rewards, group_ids, step_mask [T]) + the trainer's
    normalisation keywords + the inputs named in ``fn.needs``, and returns [B, T] advantages."""
    b, t = 4, 3
    g = torch.Generator().manual_seed(0)
    inputs = {
        "ladder": torch.randn(b, t + 1, generator=g),
        "granular": torch.randn(b, 2, generator=g),
        "process": torch.randn(b, t, generator=g),
        "balance_ids": torch.tensor([0, 0, 1, 1]),
        "critic_states": torch.randn(b, t + 1, 5, generator=g),  # AC-Flow: state + prompt features, sigma
        "auxiliary": torch.randn(b, 1, generator=g),  # GARDO: one auxiliary reward per row
        "features": torch.randn(b, 12, generator=g),  # GARDO: pooled image features per row
    }
    kw = dict(scale="group", eps=1e-4, unbiased=False, filter_zero_std=True)
    for name, scheme in CREDIT.items():
        if "tree" in scheme.needs:
            continue
        mask = torch.tensor([False, True, False]) if name == "g2rpo" else torch.tensor([True, True, False])
        extra = {k: inputs[k] for k in scheme.needs}
        out = scheme.fn(torch.randn(b, generator=g), torch.tensor([0, 0, 1, 1]), mask, **kw, **extra)
        assert out.advantages.shape == out.mask.shape == (b, t), name
        assert not out.mask[:, 2].any() and torch.isfinite(out.advantages).all(), name
    tree = hand_tree()
    for name, scheme in CREDIT.items():
        if "tree" not in scheme.needs:
            continue
        out = scheme.fn(tree, LEAF_R, **kw)
        assert out.advantages.shape == out.mask.shape == (tree.num_nodes,) and not out.mask[0], name
