"""Samplers on a Gaussian mixture with a closed-form velocity: marginals, exactness, trees."""

import pytest
import torch

from flowalign.models.analytic import GaussianMixtureFlow
from flowalign.sampling.rollout import complete, completion_grid, log_prob_at, rollout
from flowalign.sampling.schedule import linear_sigmas, shifted_sigmas
from flowalign.sampling.tree import TreeSpec, edge_log_prob, tree_rollout

MIX = dict(
    means=[[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]], stds=[[0.5, 0.3], [0.4, 0.6], [0.3, 0.3]], weights=[0.3, 0.5, 0.2]
)
N, T = 6000, 100


@pytest.fixture(scope="module")
def mix():
    return GaussianMixtureFlow(**MIX)


@pytest.fixture(scope="module")
def bounds(mix):
    """5-sigma tolerances of the sample mean / covariance of N exact draws (4th moments from 200k)."""
    ref = mix.sample_data(200_000, torch.Generator().manual_seed(0)).double()
    c = ref - ref.mean(0)
    mean_tol = 5 * (c.var(0) / N).sqrt()
    prod = c[:, :, None] * c[:, None, :]  # [n, D, D]
    cov_tol = 5 * (prod.var(0) / N).sqrt()
    return mean_tol, cov_tol


def test_velocity_is_exact_posterior_expectation(mix):
    # at sigma = 1 the posterior over components is the prior, E[x0|x] = sum_k w_k m_k = mean
    x = torch.randn(5, 2)
    torch.testing.assert_close(mix.velocity(x, 1.0), x - mix.mean().float(), atol=1e-6, rtol=0)
    # Monte-Carlo check at sigma = .5: E[eps - x0 | x] by importance-free regression on a fine bin
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample_data(400_000, g)
    eps = torch.randn(x0.shape, generator=g)
    xs = 0.5 * x0 + 0.5 * eps
    near = (xs - torch.tensor([0.2, 0.3])).norm(dim=1) < 0.05
    mc = (eps - x0)[near].mean(0)
    torch.testing.assert_close(mix.velocity(torch.tensor([[0.2, 0.3]]), 0.5)[0], mc, atol=0.08, rtol=0)


@pytest.mark.parametrize("kind", ["ode", "flow_sde", "dance_sde"])
@pytest.mark.parametrize("level", [0.3, 0.7, 1.0])
def test_terminal_marginals_match_data(mix, bounds, kind, level):
    g = torch.Generator().manual_seed(1)
    x = mix.initial_noise(N, generator=g)
    out = rollout(mix, mix.encode(["p"] * N), x, linear_sigmas(T), kind, level, generator=g).final.double()
    mean_tol, cov_tol = bounds
    assert ((out.mean(0) - mix.mean()).abs() < mean_tol).all(), (out.mean(0), mix.mean())
    assert ((torch.cov(out.T) - mix.cov()).abs() < cov_tol).all(), (torch.cov(out.T), mix.cov())


@pytest.mark.parametrize("level", [0.3, 0.7, 1.0])
def test_cps_keeps_the_mean_but_not_the_variance_of_a_mixture(mix, bounds, level):
    """CPS re-noises from x0_pred = E[x0|x] with a noise std that does not shrink with the step
    size, so it loses the posterior variance: the mean is kept (E[E[x0|x]] = E[x0]), the covariance
    shrinks, more so at higher noise levels. This pins that known property."""
    g = torch.Generator().manual_seed(1)
    x = mix.initial_noise(N, generator=g)
    out = rollout(mix, mix.encode(["p"] * N), x, linear_sigmas(T), "cps", level, generator=g).final.double()
    assert ((out.mean(0) - mix.mean()).abs() < 3 * bounds[0]).all()
    shrink = torch.cov(out.T).trace() / mix.cov().trace()
    assert shrink < 1.0


def test_sampling_time_log_probs_are_recomputed_exactly(mix):
    cond = mix.encode(["p"] * 8)
    for kind in ["flow_sde", "dance_sde", "cps", "cps_flowgrpo"]:
        g = torch.Generator().manual_seed(2)
        r = rollout(mix, cond, mix.initial_noise(8, generator=g), shifted_sigmas(10), kind, 0.7, generator=g)
        for j in range(10):
            assert (log_prob_at(mix, cond, r, j).log_prob - r.log_probs[:, j]).abs().max() <= 1e-6


def test_tree_without_branching_is_the_flat_rollout(mix):
    cond = mix.encode(["a", "b", "c"])
    for kind in ["flow_sde", "cps"]:
        g = torch.Generator().manual_seed(3)
        flat = rollout(mix, cond, mix.initial_noise(3, generator=g), shifted_sigmas(8), kind, 0.7, generator=g)
        g = torch.Generator().manual_seed(3)
        tree = tree_rollout(
            mix, cond, mix.initial_noise(3, generator=g), shifted_sigmas(8), TreeSpec((2, 5), 1), kind, 0.7, generator=g
        )
        as_flat = tree.to_rollout()
        assert torch.equal(as_flat.latents, flat.latents) and torch.equal(as_flat.log_probs, flat.log_probs)
        assert tree.nfe == flat.nfe == 3 * 8


def test_tree_nfe_and_structure(mix):
    # binary splits at steps 2,4,6,8 of 10: frontier sizes 1,1,1,2,2,4,4,8,8,16 -> 47 NFE for 16 leaves;
    # children made per step 1,1,2,2,4,4,8,8,16,16 = 62 nodes + 1 root
    g = torch.Generator().manual_seed(4)
    tree = tree_rollout(
        mix,
        mix.encode(["p"]),
        mix.initial_noise(1, generator=g),
        linear_sigmas(10),
        TreeSpec((2, 4, 6, 8), 2),
        "flow_sde",
        0.7,
        generator=g,
    )
    assert tree.nfe == 47 and len(tree.leaves) == 16 and tree.num_nodes == 63
    assert tree.depth[tree.leaves].tolist() == [4] * 16 and tree.step[tree.leaves].tolist() == [10] * 16
    # siblings at a split share the parent state and kernel mean but not the sample
    kids = torch.nonzero(tree.parent == tree.parent[tree.leaves[0]]).flatten()
    assert len(kids) == 1  # the last split is at step 8, leaves come one step later
    paths = torch.tensor([tree.path(int(n)) for n in tree.leaves])
    assert (paths[:, :3] == paths[0, :3]).all()  # shared prefix up to the first split
    nodes = torch.nonzero(tree.parent >= 0).flatten()
    assert (edge_log_prob(mix, mix.encode(["p"]), tree, nodes).log_prob - tree.log_prob[nodes]).abs().max() <= 1e-6


def test_correlated_branch_noise(mix):
    # s = 0: siblings share their noise exactly; s large: nearly independent
    g = torch.Generator().manual_seed(5)
    cond = mix.encode(["p"])
    tree = tree_rollout(
        mix,
        cond,
        mix.initial_noise(1, generator=g),
        linear_sigmas(4),
        TreeSpec((1,), 4, branch_corr=0.0),
        "dance_sde",
        0.5,
        generator=g,
    )
    kids = torch.nonzero(tree.step == 2).flatten()
    assert torch.allclose(tree.latents[kids], tree.latents[kids[:1]].expand(4, -1))


def test_complete_and_grid(mix):
    sig = shifted_sigmas(10)
    assert completion_grid(sig, 4).numel() == 7  # points 4..10
    assert completion_grid(sig, 4, stride=4).tolist() == sig[[4, 8, 10]].tolist()
    assert completion_grid(sig, 0, num_steps=2).tolist() == sig[[0, 5, 10]].tolist()
    cond = mix.encode(["p"] * 2)
    g = torch.Generator().manual_seed(6)
    r = rollout(mix, cond, mix.initial_noise(2, generator=g), sig, "ode")
    final, nfe = complete(mix, cond, r.latents[:, 3], sig, 3)
    assert nfe == 2 * 7 and torch.allclose(final, r.final, atol=1e-6)  # the ODE completion of an ODE path


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(noise_levels=torch.tensor([0.5, -0.1, 0.0])), "noise_level must be >= 0"),
        (dict(step="nope"), "unknown step kind"),
        (dict(generator=[torch.Generator()] * 3), "3 generators for a batch of 2"),
    ],
)
def test_rollout_bad_input(mix, kwargs, match):
    with pytest.raises(ValueError, match=match):
        rollout(mix, mix.encode(["a", "b"]), torch.zeros(2, 2), linear_sigmas(3), **kwargs)


@pytest.mark.parametrize(
    "spec,match",
    [
        (TreeSpec((3, 12)), r"split_steps=\[3, 12\] must be step indices in \[0, 9\]"),
        (TreeSpec((5, 2)), "strictly increasing"),
        (TreeSpec((2,), 0), "branch_factor=\\[0\\] must be ints >= 1"),
    ],
)
def test_tree_bad_spec(mix, spec, match):
    with pytest.raises(ValueError, match=match):
        tree_rollout(mix, mix.encode(["a"]), torch.zeros(1, 2), linear_sigmas(10), spec, "flow_sde", 0.7)
