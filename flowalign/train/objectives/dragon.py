"""DRAGON (Bai et al. 2025, arXiv 2504.15217): distributional rewards. Online samples of each prompt are
split into a positive and a negative demonstration set by a reward that scores a SET, and the model is
trained contrastively on the two sets.

Set-level reward (ours, one of the paper's families): ``R(D) = mean_{x in D} r(x) + diversity_weight *
log Vendi(D)``, the mean of the training reward r (instance-wise) plus a Vendi diversity bonus (Friedman
& Dieng 2023: ``Vendi = exp(entropy of the eigenvalues of K / n)``, K the cosine-similarity kernel of the
samples' features, here the decoded image average-pooled to ``feature_size`` x ``feature_size``: on the
shapes world it keeps layout, sizes and colours). ``diversity_weight=0`` reduces it to an instance
reward. Sets: for each prompt of the iteration (the rows that share a prompt), the positive set is built
greedily to maximise R (start from the best instance, add the row that raises R most) up to half the
group; the negative set is the rest. A set of one has no diversity: a group of fewer than 4 samples
(sets of 2) is one ValueError.

Objective: the paper trains with DPO- / KTO-style losses on the two sets; we use the KTO form
(Diffusion-KTO, arXiv 2404.04465) because it is per sample and so needs no partner in the micro-batch:
with the flow-matching error ``e_theta = mean |v_theta(x_t) - (eps - x0)|^2`` at the trained step's sigma
(x_t a fresh forward-process noising of the sample, as DiffusionNFT's) and ``d = e_theta - e_ref`` (the
reference is the adapter-off base), ``loss = 1 - sigmoid(-beta * s * d)`` with s = +1 for the positive
and -1 for the negative set. The KTO reference point is 0 (Diffusion-KTO's batch KL estimate is not
used). The credit scheme's advantages are ignored (``credit.kind=grpo`` computed but unused); the
instance rewards are recomputed from the rollout's images at the start of the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...ranges import ranged
from ...rewards.diversity import pixel_features
from ...types import LossOut
from .common import Unit, UnitInputs, once_per_rows, reference
from .reward_grad import fresh_noise


@dataclass
class DragonOptions:
    beta: float = ranged(500.0, "(0, inf)")  # KTO temperature on the error gap d (Diffusion-DPO/KTO use 10^3)
    diversity_weight: float = ranged(0.1, "[0, inf)")  # weight of log Vendi in the set reward (0 = instance only)
    feature_size: int = ranged(8, "[1, inf)")  # images average-pooled to this size for the Vendi kernel


def check_dragon(o: DragonOptions, cfg) -> None:
    n = cfg.sample.group_size
    if n // 2 < 2:
        raise ValueError(
            f"objective.kind='dragon' splits each prompt's {n} samples into a positive and a negative set of "
            f"{n // 2} and {n - n // 2}; a set-level reward needs sets of >= 2 samples (a set of one has no "
            f"diversity): use sample.group_size >= 4."
        )


def vendi_score(features: Tensor) -> Tensor:
    """Vendi score of a set of n >= 2 feature rows [n, F]: exp(-sum lam log lam), lam the eigenvalues of
    K / n with K the cosine-similarity kernel (1 for n identical rows, n for n orthogonal ones)."""
    if features.shape[0] < 2:
        raise ValueError(f"a set-level reward needs a set of >= 2 samples, got a set of {features.shape[0]}.")
    f = F.normalize(features.double().flatten(1), dim=1)
    lam = torch.linalg.eigvalsh(f @ f.T / f.shape[0]).clamp_min(0)
    lam = lam[lam > 1e-12]
    return torch.exp(-(lam * lam.log()).sum())


def set_reward(rewards: Tensor, features: Tensor, weight: float) -> Tensor:
    """R(D) = mean instance reward + weight * log Vendi(D)."""
    return rewards.double().mean() + weight * vendi_score(features).log()


def split_group(rewards: Tensor, features: Tensor, weight: float) -> Tensor:
    """[n] bool, the positive set of one prompt's n >= 4 samples: greedy maximiser of R, size n // 2."""
    n = rewards.shape[0]
    if n // 2 < 2:
        raise ValueError(f"a set-level reward needs sets of >= 2 samples; a group of {n} gives a set of {n // 2}.")
    pos = [int(rewards.argmax())]
    while len(pos) < n // 2:
        rest = [i for i in range(n) if i not in pos]
        gain = [float(set_reward(rewards[pos + [i]], features[pos + [i]], weight)) for i in rest]
        pos.append(rest[max(range(len(rest)), key=gain.__getitem__)])
    mask = torch.zeros(n, dtype=torch.bool)
    mask[pos] = True
    return mask


@torch.no_grad()
def labels(inp: UnitInputs, o: DragonOptions) -> tuple[Tensor, dict]:
    """[N] +1 (positive set) / -1 (negative) per row, from the rollout's decoded images, and set stats."""
    model, ro, bs = inp.model, inp.rollout, inp.cfg.sample.batch_size
    prompts = list(inp.cond.prompts)
    images = torch.cat([model.decode(ro.final[i : i + bs]) for i in range(0, len(prompts), bs)])
    out = inp.reward_fn(images, prompts)
    r = (out.total if hasattr(out, "total") else torch.as_tensor(out)).detach().float().cpu()
    feats = pixel_features(images, o.feature_size).cpu()
    s, pos_r, neg_r, vendi = torch.zeros(len(prompts)), [], [], []
    for p in dict.fromkeys(prompts):
        idx = torch.tensor([i for i, q in enumerate(prompts) if q == p])
        pos = split_group(r[idx], feats[idx], o.diversity_weight)
        s[idx] = torch.where(pos, 1.0, -1.0)
        pos_r.append(set_reward(r[idx[pos]], feats[idx[pos]], o.diversity_weight))
        neg_r.append(set_reward(r[idx[~pos]], feats[idx[~pos]], o.diversity_weight))
        vendi.append(vendi_score(feats[idx[pos]]))
    stats = {"set_reward_pos": torch.stack(pos_r).mean(), "set_reward_neg": torch.stack(neg_r).mean()}
    return s, {**stats, "vendi_pos": torch.stack(vendi).mean()}


def kto_loss(err: Tensor, err_ref: Tensor, sign: Tensor, beta: float) -> Tensor:
    """mean of 1 - sigmoid(-beta * s * (err - err_ref)) over the rows."""
    return (1 - torch.sigmoid(-beta * sign * (err - err_ref))).mean()


def dragon_unit(inp: UnitInputs, o: DragonOptions) -> Unit:
    if inp.reward_fn is None:
        raise ValueError("objective.kind='dragon' needs the training reward (UnitInputs.reward_fn is None).")
    ro, cfg = inp.rollout, inp.cfg
    sign, set_stats = labels(inp, o)
    x0 = ro.final.detach()
    select = once_per_rows(inp.cond.select)

    def unit(rows: Tensor, j: int, adv: Tensor, mask: Tensor) -> LossOut:
        c, sigma = select(rows), ro.sigmas[j]
        index = [inp.sample_index[i] for i in rows.tolist()]
        eps = fresh_noise(cfg.train.seed, inp.iteration, index, j, ro.num_steps, x0.shape[1:], x0.device)
        x_t, target = (1 - sigma) * x0[rows] + sigma * eps, eps - x0[rows]
        err = (inp.model.velocity(x_t, sigma, c).float() - target).pow(2).flatten(1).mean(1)
        with torch.no_grad(), reference(inp):
            v_ref = (inp.ref_model or inp.model).velocity(x_t, sigma, c).float()
        err_ref = (v_ref - target).pow(2).flatten(1).mean(1)
        s = sign[rows.cpu()].to(err.device)
        loss = kto_loss(err, err_ref, s, o.beta)
        return LossOut(loss, {**set_stats, "error_gap": (err - err_ref).detach().mean()})

    return unit
