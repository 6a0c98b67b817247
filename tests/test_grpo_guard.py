"""GRPO-Guard (arXiv 2510.22319): RatioNorm's normalised ratio and the 1/Delta gradient reweighting,
by hand, as properties of the flow_sde kernel, as a unit against Flow-GRPO's, and in a short run."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch

from flowalign.sampling.rollout import rollout
from flowalign.sampling.sde import flow_sde, gaussian_log_prob
from flowalign.train.losses import flow_grpo_loss
from flowalign.train.objectives import OBJECTIVES, UnitInputs
from flowalign.train.objectives.flow_grpo import FlowGRPOOptions, flow_grpo_unit
from flowalign.train.objectives.grpo_guard import (
    GRPOGuardOptions,
    check_grpo_guard,
    grpo_guard_loss,
    grpo_guard_unit,
    guard_log_ratio,
)
from flowalign.types import Cond, StepOut


def step_out(x_next, mean, std) -> StepOut:
    std = torch.as_tensor(std, dtype=torch.float32).expand(len(x_next)).clone()
    return StepOut(x_next, mean, std, gaussian_log_prob(x_next, mean, std), x_next)


# --- by hand ------------------------------------------------------------------------------------------
def test_hand_computed_ratio_and_loss():
    # Two elements, s = 0.5 (sigma_t = 1, Delta = 0.25), mu_old = (0, 0), z = (1, 0): x' = (0.5, 0).
    # mu_theta = (0.1, 0.1): d = (0.1, 0.1).
    #   l_old   = mean(-z^2 / 2)                    = -0.25        (- log s - log sqrt(2 pi) in both)
    #   l_theta = mean(-(x' - mu)^2 / (2 s^2)) = -mean(0.16, 0.01) / 0.5 = -0.17
    #   l_theta - l_old = 0.08  (= mean(d z) / s - mean(d^2) / (2 s^2) = 0.1 - 0.02), vanilla rho = e^0.08
    #   bias b = mean(d^2) / (2 s^2) = 0.01 / 0.5 = 0.02
    #   log rho_norm = s (0.08 + 0.02) = 0.05 = mean(d z) = (0.1 * 1 + 0.1 * 0) / 2;  rho_norm = e^0.05 = 1.051271
    # Batch of two such samples with A = (1, -1), eps = 0.02:
    #   A = +1: max(-1.051271, -clip -> -1.02) = -1.02 (clipped); A = -1: max(1.051271, 1.02) = 1.051271
    #   mean = (-1.02 + 1.051271) / 2 = 0.0156355; reweighted / Delta (0.25) = 0.062542
    mu_old = torch.zeros(2, 2)
    x_next = torch.tensor([[0.5, 0.0], [0.5, 0.0]])
    mu = torch.full((2, 2), 0.1)
    out, old = step_out(x_next, mu, 0.5), step_out(x_next, mu_old, 0.5)
    assert torch.allclose(out.log_prob - old.log_prob, torch.tensor([0.08, 0.08]), atol=1e-6)
    log_ratio = guard_log_ratio(out.log_prob, old.log_prob, out.mean, mu_old, out.std)
    assert torch.allclose(log_ratio, torch.tensor([0.05, 0.05]), atol=1e-6)
    adv = torch.tensor([1.0, -1.0])
    o = GRPOGuardOptions(clip_range=0.02, beta=0.0)
    lo = grpo_guard_loss(out, None, old.log_prob, mu_old, adv, None, -0.25, o)
    assert lo.loss.item() == pytest.approx((-1.02 + math.exp(0.05)) / 2 / 0.25, abs=1e-5)
    assert lo.loss.item() == pytest.approx(0.062542, abs=1e-5)
    assert float(lo.stats["clipfrac_gt_one"]) == 1.0  # both ratios beyond 1 + eps (the first one's term is clipped)
    no_reweight = grpo_guard_loss(
        out, None, old.log_prob, mu_old, adv, None, -0.25, GRPOGuardOptions(0.02, reweight=False)
    )
    assert no_reweight.loss.item() == pytest.approx(0.0156355, abs=1e-6)


# --- properties of the flow_sde kernel -------------------------------------------------------------------
def flow_sde_pair(sigma, sigma_next, a=0.7, seed=0):
    """(x [2, 3, 4, 4], z, old StepOut under v = w_old x, new StepOut scoring its x' under v = w x, w)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 4, generator=g)
    z = torch.randn(x.shape, generator=g)
    w_old = torch.tensor(0.3)
    w = (w_old + 0.05 * torch.randn((), generator=g)).requires_grad_(True)
    old = flow_sde(x, w_old * x, sigma, sigma_next, a, noise=z)
    new = flow_sde(x, w * x, sigma, sigma_next, a, x_next=old.x_next)
    return x, z, old, new, w


@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.8), (0.6, 0.4), (0.2, 0.1), (0.05, 0.01)])
def test_normalised_log_ratio_is_mean_d_z(sigma, sigma_next):
    x, z, old, new, _ = flow_sde_pair(sigma, sigma_next)
    d = (new.mean - old.mean).detach()
    log_ratio = guard_log_ratio(new.log_prob, old.log_prob, new.mean, old.mean, new.std).detach()
    assert torch.allclose(log_ratio, (d * z).flatten(1).mean(1), atol=1e-6)
    on = flow_sde(x, 0.3 * x, sigma, sigma_next, 0.7, x_next=old.x_next)  # the sampling weights again
    assert torch.equal(guard_log_ratio(on.log_prob, old.log_prob, on.mean, old.mean, on.std), torch.zeros(2))


def test_reweighted_gradient_is_step_uniform():
    # v = w x, on-policy: d log rho_norm / dw = mean(z dmu/dw) = -Delta (1 + a^2 / 2) mean(z x) for sigma < 1,
    # so / Delta it is the same at every step; Flow-GRPO's d log rho / dw = that / s grows as sigma -> 0.
    a, guard, vanilla = 0.7, [], []
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(1, 64, generator=g), torch.randn(1, 64, generator=g)
    for sigma, sigma_next in [(0.9, 0.7), (0.5, 0.45), (0.1, 0.02)]:
        w = torch.tensor(0.3, requires_grad=True)
        old = flow_sde(x, 0.3 * x, sigma, sigma_next, a, noise=z)
        new = flow_sde(x, w * x, sigma, sigma_next, a, x_next=old.x_next)
        delta = sigma - sigma_next
        lr = guard_log_ratio(new.log_prob, old.log_prob, new.mean, old.mean, new.std) / delta
        guard.append(torch.autograd.grad(lr.sum(), w, retain_graph=True)[0].item())
        vanilla.append(torch.autograd.grad((new.log_prob - old.log_prob).sum(), w)[0].item())
    expect = -(1 + a**2 / 2) * (z * x).mean().item()
    assert guard == pytest.approx([expect] * 3, rel=1e-4)
    assert abs(vanilla[2]) > 3 * abs(vanilla[0])  # the vanilla gradient blows up at low noise


def test_switched_off_equals_flow_grpo_loss():
    _, _, old, new, w = flow_sde_pair(0.6, 0.4)
    ref = flow_sde_pair(0.6, 0.4, seed=3)[3]
    adv, mask = torch.tensor([2.0, -7.0]), torch.tensor([True, True])
    o = GRPOGuardOptions(clip_range=1e-3, clip_range_high=2e-3, beta=0.1, ratio_norm=False, reweight=False)
    fg = flow_grpo_loss(new, ref, old.log_prob, adv, mask, -0.2, **FlowGRPOOptions(1e-3, 2e-3, beta=0.1).loss_kwargs())
    gg = grpo_guard_loss(new, ref, old.log_prob, None, adv, mask, -0.2, o)
    assert torch.equal(fg.loss, gg.loss) and fg.stats.keys() == gg.stats.keys()
    assert torch.equal(torch.autograd.grad(fg.loss, w, retain_graph=True)[0], torch.autograd.grad(gg.loss, w)[0])


# --- the unit -----------------------------------------------------------------------------------------------
class LinearFlow(torch.nn.Module):
    """v = w * x (+ the adapter delta unless ``reference()``): a model ``log_prob_at`` can recompute."""

    def __init__(self):
        super().__init__()
        self.delta = torch.nn.Parameter(torch.zeros(3, 1, 1))
        self.off, self.nfe = False, 0

    def velocity(self, x, sigma, cond):
        self.nfe += len(x)
        return x * (0.2 + (0 if self.off else self.delta)) + cond.embeds["e"].view(-1, 1, 1, 1)

    @contextlib.contextmanager
    def reference(self):
        self.off = True
        try:
            yield
        finally:
            self.off = False


def unit_inputs(n=6, steps=4):
    model = LinearFlow()
    cond = Cond(embeds={"e": torch.linspace(-1, 1, n).unsqueeze(1)})
    x = torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.linspace(1, 0, steps + 1)
    levels = torch.tensor([0.7] * (steps - 1) + [0.0])
    with torch.no_grad():
        ro = rollout(model, cond, x, sigmas, "flow_sde", levels, generator=torch.Generator().manual_seed(1))
    cfg = SimpleNamespace(sample=SimpleNamespace(batch_size=4, step="flow_sde"))
    return UnitInputs(cfg, model, cond, ro, list(range(steps - 1)), 0, list(range(n)))


def test_unit_on_policy_ratio_is_one_then_moves():
    inp = unit_inputs()
    unit = grpo_guard_unit(inp, GRPOGuardOptions(clip_range=1e-3, beta=0.04))
    rows, adv = torch.tensor([4, 1, 3]), torch.tensor([1.0, -2.0, 0.5])
    mask = torch.ones(3, dtype=torch.bool)
    for j in inp.steps:
        lo = unit(rows, j, adv, mask)
        delta = float(inp.rollout.sigmas[j] - inp.rollout.sigmas[j + 1])
        assert float(lo.stats["ratio_max"]) == 1.0 and float(lo.stats["ratio_min"]) == 1.0
        assert lo.stats["policy_loss"].item() == pytest.approx(-adv.mean().item() / delta, rel=1e-6)
        assert float(lo.stats["kl"]) == 0.0  # the adapter delta is 0: policy = reference
    with torch.no_grad():
        inp.model.delta.add_(0.01)  # an update: mu_old was kept from before it
    lo = unit(rows, 1, adv, mask)
    assert float(lo.stats["ratio_max"]) != 1.0 and float(lo.stats["kl"]) > 0


def test_unit_switched_off_equals_flow_grpo_unit():
    inp = unit_inputs()
    with torch.no_grad():
        inp.model.delta.add_(0.02)  # off-policy, so the ratios and the KL are not trivial
    kw = {"clip_range": 1e-2, "beta": 0.04}
    guard = grpo_guard_unit(inp, GRPOGuardOptions(**kw, ratio_norm=False, reweight=False))
    flow = flow_grpo_unit(inp, FlowGRPOOptions(**kw))
    rows, adv, mask = torch.tensor([0, 5]), torch.tensor([1.5, -0.5]), torch.tensor([True, False])
    for j in inp.steps:
        a, b = guard(rows, j, adv, mask), flow(rows, j, adv, mask)
        assert torch.equal(a.loss, b.loss)
        ga = torch.autograd.grad(a.loss, inp.model.delta)[0]
        assert torch.equal(ga, torch.autograd.grad(b.loss, inp.model.delta)[0])


def test_registry_and_checks():
    entry = OBJECTIVES["grpo_guard"]
    assert entry.build is grpo_guard_unit and entry.options is GRPOGuardOptions and entry.check is check_grpo_guard
    cfg = SimpleNamespace(sample=SimpleNamespace(step="flow_sde"))
    check_grpo_guard(GRPOGuardOptions(), cfg)
    with pytest.raises(ValueError, match=r"objective\.options\.clip_range=0\.0 must be > 0"):
        check_grpo_guard(GRPOGuardOptions(clip_range=0.0), cfg)
    with pytest.raises(ValueError, match=r"objective\.options\.kl_mode='kl'"):
        check_grpo_guard(GRPOGuardOptions(kl_mode="kl"), cfg)
    cps = SimpleNamespace(sample=SimpleNamespace(step="cps_flowgrpo"))
    with pytest.raises(ValueError, match=r"objective\.options\.ratio_norm=True .*ratio_norm=false"):
        check_grpo_guard(GRPOGuardOptions(), cps)
    check_grpo_guard(GRPOGuardOptions(ratio_norm=False), cps)


# --- a short training run ----------------------------------------------------------------------------------
TINY_TARGETS = "attn.to_q,attn.to_k,attn.to_v,attn.to_out.0,attn.add_k_proj,attn.add_v_proj"
TINY = [  # 16 px images (8x8 latents), 4 steps (3 trained), one prompt x 4 images in one batch, no eval
    "model.path=tiny-sd3",
    "model.resolution=16",
    f"model.lora_targets={TINY_TARGETS}",
    "model.lora_rank=4",
    "model.lora_alpha=8",
    "sample.num_steps=4",
    "sample.window.kind=all",
    "sample.same_noise=false",
    "sample.group_size=4",
    "sample.groups_per_iteration=1",
    "sample.batch_size=4",
    "eval.every=0",
    "train.ema=false",
    "train.iterations=2",
    "log.progress=false",
    "optim.lr=1e-2",
    "optim.steps_per_iteration=1",
    "objective.kind=grpo_guard",
    "objective.options.clip_range=0.2",
    "objective.options.beta=1e-3",
]


def test_training_run_with_grpo_guard_changes_the_trainable_parameters(tmp_path):
    from flowalign.overrides import apply_overrides
    from flowalign.train.build import build_model
    from flowalign.train.config import RENAMED
    from flowalign.train.data import PromptSet
    from flowalign.train.loop import train
    from flowalign.train.presets import get_preset

    cfg = apply_overrides(get_preset("testbed"), [*TINY, f"train.output_dir={tmp_path / 'run'}"], RENAMED)
    assert isinstance(cfg.objective.options, GRPOGuardOptions) and cfg.objective.options.clip_range == 0.2
    model, export_fn, _ = build_model(cfg)
    before = {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}
    prompts = PromptSet(["a red circle", "two blue squares", "a green triangle", "a yellow star"], [{}] * 4)
    res = train(
        cfg, model, lambda im, p, **m: im.mean((1, 2, 3)), prompts, run_dir=tmp_path / "run", export_fn=export_fn
    )
    after = {n: p.detach() for n, p in model.transformer.named_parameters() if p.requires_grad}
    first = res.history[0]
    # one optimizer step per iteration: every unit sees the sampling weights -> the normalised ratio is 1
    assert first["train/ratio_max"] == first["train/ratio_min"] == 1.0 and first["train/approx_kl"] == 0.0
    assert first["train/step_weight"] > 1  # 1 / Delta of the trained steps
    assert res.state.optimizer_step == 2 and res.state.skipped_steps == 0
    assert all(not torch.equal(before[n], after[n]) for n in before)  # every LoRA tensor moved
