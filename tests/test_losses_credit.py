"""Hand-computed GRPO advantages and clipped losses."""

import math

import pytest
import torch

from flowalign.credit.group import grpo, normalize
from flowalign.train.losses import clipped_policy_loss, gaussian_kl, total_loss


def test_group_advantages_by_hand():
    # groups {0: [1, 3], 1: [2, 2, 5]}; population std: group 0 -> 1, group 1 -> sqrt(2) = 1.4142
    # A = (1 - 2)/1, (3 - 2)/1, (2 - 3)/1.4142, (2 - 3)/1.4142, (5 - 3)/1.4142 (eps 0)
    r = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0])
    gid = torch.tensor([7, 7, 9, 9, 9])
    adv, std = normalize(r, gid, "group", eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, -0.7071068, -0.7071068, 1.4142135]))
    # batch std (flow_grpo global_std): mean 2.6, var = (2.56 + .16 + .36 + .36 + 5.76)/5 = 1.84
    adv_b, _ = normalize(r, gid, "batch", eps=0.0)
    torch.testing.assert_close(adv_b, (r - torch.tensor([2, 2, 3, 3, 3.0])) / math.sqrt(1.84))
    # unbiased group std: group 1 -> sqrt(6 / 2) = 1.7320508
    adv_u, _ = normalize(r, gid, "group", eps=0.0, unbiased=True)
    torch.testing.assert_close(adv_u[4], torch.tensor(2 / 1.7320508))


def test_grpo_broadcasts_and_filters_zero_variance_groups():
    r = torch.tensor([1.0, 1.0, 0.0, 2.0])  # group 0 has no variance
    out = grpo(r, torch.tensor([0, 0, 1, 1]), torch.tensor([True, True, False]), eps=1e-4)
    assert out.mask.tolist() == [[False] * 3, [False] * 3, [True, True, False], [True, True, False]]
    # group 1: mean 1, std 1 -> A = -1/(1 + 1e-4), +1/(1 + 1e-4) on the trained steps, 0 elsewhere
    torch.testing.assert_close(out.advantages[2], torch.tensor([-1, -1, 0.0]) / 1.0001)
    assert out.stats["zero_std_frac"] == 0.5


def test_clipped_loss_by_hand():
    # log-ratios .1 and -.1: r = 1.1051709, .9048374; eps = .05 -> clipped to 1.05 / .95
    # A = +1: max(-1.1051709, -1.05) = -1.05 ; A = -2: max(2 * .9048374, 2 * .95) = 1.9
    # loss = (-1.05 + 1.9) / 2 = .425; both pairs are clipped -> clipfrac 1
    lp = torch.tensor([0.1, -0.1], requires_grad=True)
    out = clipped_policy_loss(lp, torch.zeros(2), torch.tensor([1.0, -2.0]), clip_range=0.05)
    assert abs(out.loss.item() - 0.425) < 1e-6 and out.stats["clipfrac"].item() == 1.0
    out.loss.backward()
    assert lp.grad.abs().sum() == 0  # clipped pairs carry no gradient
    # inside the range: A = 1, log-ratio .01 -> loss = -exp(.01) = -1.0100502, d/dlp = -1.0100502
    lp = torch.tensor([0.01], requires_grad=True)
    out = clipped_policy_loss(lp, torch.zeros(1), torch.ones(1), clip_range=0.05)
    out.loss.backward()
    assert abs(out.loss.item() + 1.0100502) < 1e-6 and abs(lp.grad.item() + 1.0100502) < 1e-6
    # approx_kl = .5 * .01^2 = 5e-5
    assert abs(out.stats["approx_kl"].item() - 5e-5) < 1e-9


def test_advantage_clip_and_mask():
    # A = 10 clipped to 5; on-policy ratio 1: loss = -5 for the kept pair, the masked one ignored
    out = clipped_policy_loss(
        torch.zeros(2), torch.zeros(2), torch.tensor([10.0, 3.0]), mask=torch.tensor([True, False])
    )
    assert out.loss.item() == -5.0


def test_gaussian_kl_by_hand():
    # mean diff .2 on both elements, std .5: .04 / (2 * .25) = .08; flow_grpo mode x |dt| = .1 -> .008
    m, ref = torch.full((1, 2), 0.2), torch.zeros(1, 2)
    assert abs(gaussian_kl(m, ref, torch.tensor([0.5])).item() - 0.08) < 1e-7
    assert abs(gaussian_kl(m, ref, torch.tensor([0.5]), dt=-0.1, mode="flow_grpo").item() - 0.008) < 1e-8
    assert gaussian_kl(m, ref, torch.tensor([0.0])).item() == 0.0  # deterministic step: no KL
    total = total_loss(
        clipped_policy_loss(torch.zeros(1), torch.zeros(1), torch.ones(1)),
        gaussian_kl(m, ref, torch.tensor([0.5])),
        beta=0.5,
    )
    assert abs(total.loss.item() - (-1.0 + 0.04)) < 1e-6


def test_bad_scale():
    with pytest.raises(ValueError, match="advantage scale 'prompt'"):
        normalize(torch.zeros(2), torch.zeros(2), "prompt")


def test_nft_loss_by_hand():
    from flowalign.train.losses import nft_loss

    # one sample, 2 elements: x0 = 0, x_t = 1, sigma = .5, v_old = 1, v = (2, 1), nft_beta = 1, A = 2.5 (clip 5)
    # r = 2.5 / 5 / 2 + .5 = .75
    # v+ = v -> x0+ = 1 - .5 v = (0, .5); w+ = .25, mean err^2 = .125 -> pos = .5
    # v- = 2 v_old - v = (0, 1) -> x0- = (1, .5); w- = .75, mean err^2 = .625 -> neg = .8333
    # policy = 5 x (.75 x .5 + .25 x .8333) = 2.916667; KL: v_ref = (2, 0), mean (v - v_ref)^2 = .5, x beta .1 = .05
    v = torch.tensor([[2.0, 1.0]], requires_grad=True)
    kw = dict(
        v_old=torch.tensor([[1.0, 1.0]]),
        x_t=torch.ones(1, 2),
        x0=torch.zeros(1, 2),
        sigma=torch.tensor([0.5]),
        advantages=torch.tensor([2.5]),
    )
    out = nft_loss(v, v_ref=torch.tensor([[2.0, 0.0]]), beta=0.1, **kw)
    assert out.loss.item() == pytest.approx(2.916667 + 0.05, abs=1e-5)
    assert out.stats["r_mean"].item() == pytest.approx(0.75) and out.stats["old_deviation"].item() == pytest.approx(0.5)
    out.loss.backward()
    # d pos / dv = 2 err (-sigma) / (n w+) = (0, -1); d neg / dv = +2 err sigma / (n w-) = (.6667, .3333)
    # policy grad = 5 x (.75 (0, -1) + .25 (.6667, .3333)) = (.8333, -3.3333);
    # KL grad = .1 x 2 (v - v_ref) / 2 = (0, .1)
    torch.testing.assert_close(v.grad, torch.tensor([[0.833333, -3.233333]]), atol=1e-5, rtol=0)
    # r = 1 (A >= clip): minimised at the sample's own velocity u = (x_t - x0) / sigma = 2, whatever v_old is
    v2 = torch.tensor([[2.0, 2.0]], requires_grad=True)
    nft_loss(v2, **{**kw, "advantages": torch.tensor([9.0])}).loss.backward()
    assert v2.grad.abs().max() < 1e-6
    # a masked-out row contributes nothing
    both = nft_loss(
        torch.cat([v, v]).detach(), **{k: torch.cat([x, x]) for k, x in kw.items()}, mask=torch.tensor([True, False])
    )
    assert both.loss.item() == pytest.approx(2.916667, abs=1e-5)
