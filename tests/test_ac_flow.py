"""AC-Flow (arXiv 2510.18072): GAE over critic values by hand, shaping + clipping + warm-up through the
credit function, the critic's loss going down, the critic_lr error through the CLI, a tiny training run."""

import re

import pytest
import torch
from test_trainer import PROMPTS, TINY, brightness

from flowalign.credit import CREDIT, grpo
from flowalign.credit.ac_flow import (
    ACFlowOptions,
    CriticState,
    ac_flow,
    check_ac_flow,
    critic_features,
    critic_states,
    gae,
    pool_states,
    pooled_prompt,
    sigma_embedding,
)
from flowalign.train import apply_overrides, get_preset
from flowalign.train.checks import validate

close = torch.testing.assert_close


def test_gae_by_hand():
    # V = [0.5, 1.0, 0.0], V(x_T) = 2: delta = [1.0 - 0.5, 0.0 - 1.0, 2.0 - 0.0] = [0.5, -1.0, 2.0]
    # lambda 0.5: A_2 = 2; A_1 = -1 + 0.5 * 2 = 0; A_0 = 0.5 + 0.5 * 0 = 0.5
    v, final = torch.tensor([[0.5, 1.0, 0.0]]), torch.tensor([2.0])
    close(gae(v, final, 0.5), torch.tensor([[0.5, 0.0, 2.0]]))
    close(gae(v, final, 1.0), torch.tensor([[1.5, 1.0, 2.0]]))  # lambda 1: r~ - V(x_j)
    close(gae(v, final, 0.0), torch.tensor([[0.5, -1.0, 2.0]]))  # lambda 0: one-step TD errors


def test_critic_inputs_by_hand():
    # sigma 0.5: [0.5, sin(pi/2), sin(pi), sin(3pi/2), sin(2pi), cos(pi/2), cos(pi), cos(3pi/2), cos(2pi)]
    close(sigma_embedding(torch.tensor(0.5)), torch.tensor([0.5, 1, 0, -1, 0, 0, -1, 0, 1.0]), atol=1e-6, rtol=0)
    # a [1, 1, 1, 4, 4] latent (one state, one channel): 2x2 pooling gives the quadrant means
    x = torch.arange(16.0).reshape(1, 1, 1, 4, 4)  # image rows [0..3], [4..7], [8..11], [12..15]
    close(pool_states(x)[0, 0], torch.tensor([2.5, 4.5, 10.5, 12.5]))  # (0+1+4+5)/4 = 2.5, ...
    packed = torch.arange(12.0).reshape(1, 1, 3, 4)  # 3 tokens of width 4 -> the token mean
    close(pool_states(packed)[0, 0], torch.tensor([4.0, 5.0, 6.0, 7.0]))
    pe = torch.ones(2, 3, 4)
    close(pooled_prompt({"prompt_embeds": pe}), torch.ones(2, 4))
    close(pooled_prompt({"pooled": torch.zeros(2, 5), "prompt_embeds": pe}), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="'pooled' or 'prompt_embeds'"):
        pooled_prompt({"row": pe})


def _inputs():
    # two samples of one group, T = 2; state features: one number per state, prompt embedding [0],
    # sigmas [1, 0.5, 0] -> critic_states [2, 3, 1 + 1 + 1]
    lat = torch.tensor([[[0.5], [-3.0], [9.0]], [[0.0], [0.5], [9.0]]])  # [B, T+1, 1]
    return critic_states(lat, torch.zeros(2, 1), torch.tensor([1.0, 0.5, 0.0]))


def _probe_critic(warmup_calls: int = 0) -> CriticState:
    """A critic whose value is the state's pooled latent (feature 0 of the 11 inputs)."""
    c = CriticState(lr=1e-2, steps=3, calls=warmup_calls)
    c.net = torch.nn.Linear(11, 1)
    with torch.no_grad():
        c.net.weight.zero_()
        c.net.weight[0, 0] = 1.0
        c.net.bias.zero_()
    c.optimizer = torch.optim.Adam(c.net.parameters(), lr=c.lr)
    return c


def test_advantages_by_hand_shaping_and_clipping():
    # rewards [0, 2] in one group: r~ = [-1, 1] (z-score, eps 0). Values V = the pooled latents.
    # row 0: V = [0.5, -3.0], V(x_T) = -1: delta = [-3.5, 2.0]; A_1 = 2.0, A_0 = -3.5 + 0.5 * 2 = -2.5 -> clip -2
    # row 1: V = [0.0, 0.5], V(x_T) = 1: delta = [0.5, 0.5]; A_1 = 0.5, A_0 = 0.5 + 0.5 * 0.5 = 0.75
    c = _probe_critic()
    out = ac_flow(
        torch.tensor([0.0, 2.0]), torch.zeros(2), torch.ones(2, dtype=torch.bool), critic_states=_inputs(), critic=c,
        gae_lambda=0.5, adv_clip=2.0, warmup_iterations=0, eps=0.0,
    )  # fmt: skip
    close(out.advantages, torch.tensor([[-2.0, 2.0], [0.75, 0.5]]))
    assert out.mask.all() and out.stats["clipped_frac"] == 0.25 and out.stats["critic_warm"] == 1.0
    assert c.calls == 1 and len(c.losses) == 1


def test_warm_up_falls_back_to_grpo_and_the_critic_learns():
    r, g, m = torch.tensor([0.0, 2.0]), torch.zeros(2), torch.tensor([True, False])
    c = CriticState(lr=1e-2, steps=5, seed=0)
    kw = {"critic_states": _inputs(), "critic": c, "warmup_iterations": 3}
    first = ac_flow(r, g, m, **kw)
    before = [p.detach().clone() for p in c.net.parameters()]
    ref = grpo(r, g, m)
    for _ in range(2):
        out = ac_flow(r, g, m, **kw)
        close(out.advantages, ref.advantages)  # warm-up: Flow-GRPO's advantages while the critic trains
        assert out.stats["critic_warm"] == 0.0
    assert first.stats["critic_loss_after"] < first.stats["critic_loss"]
    assert any(not torch.equal(a, b) for a, b in zip(before, c.net.parameters()))  # the update moved it
    warm = ac_flow(r, g, m, **kw)  # 4th call: the critic's advantages
    assert warm.stats["critic_warm"] == 1.0 and not torch.equal(warm.advantages, ref.advantages)
    assert c.losses[-1] < c.losses[0]  # the same batch: its regression loss went down across calls
    assert not warm.mask[:, 1].any()  # untrained step stays masked


def test_states_and_features_layout():
    x = _inputs()  # [latent, prompt, sigma] per state
    close(x[0, :, 2], torch.tensor([1.0, 0.5, 0.0]))
    close(x[:, 1, 0], torch.tensor([-3.0, 0.5]))
    f = critic_features(x[:, :2])  # [latent, prompt, sigma embedding (9)]
    assert f.shape == (2, 2, 11)
    close(f[0, 1, 2:], sigma_embedding(torch.tensor(0.5)))


def test_registered_and_checked():
    scheme = CREDIT["ac_flow"]
    assert scheme.fn is ac_flow and scheme.options is ACFlowOptions and scheme.needs == ("critic_states",)
    validate(get_preset("testbed_ac_flow"))
    for bad in ("0", "-1e-3"):
        cfg = apply_overrides(get_preset("testbed_ac_flow"), [f"credit.options.critic_lr={bad}"])
        with pytest.raises(ValueError, match=re.escape(f"credit.options.critic_lr={float(bad)} is out of range")):
            validate(cfg)
    with pytest.raises(ValueError, match=re.escape("credit.options.critic_lr=0.0 must be > 0")):
        check_ac_flow(ACFlowOptions(critic_lr=0.0), None)


def test_critic_lr_zero_is_one_cli_error(tmp_path, monkeypatch, capsys):
    import flowalign.train.run
    from flowalign.cli import main

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded: the bad input was not refused before loading")

    monkeypatch.setattr(flowalign.train.run, "build_model", loaded)
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["train", "testbed_ac_flow", "credit.options.critic_lr=0"])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("flowalign train: error: ") and "credit.options.critic_lr=0" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.e2e
def test_tiny_training_run_changes_parameters(tmp_path):
    from flowalign.train.run import main, resolve_config

    items = TINY + ["credit.kind=ac_flow", "credit.options.warmup_iterations=0"]  # the critic steers at once
    cfg, _ = resolve_config(None, items + [f"train.output_dir={tmp_path}/run"], None)
    assert isinstance(cfg.credit.options, ACFlowOptions)
    torch.manual_seed(0)
    res = main(cfg, reward_fn=brightness, prompts=PROMPTS)
    assert res.state.optimizer_step > 0 and res.state.skipped_steps == 0
    lora_b = {n: p for n, p in res.model.transformer.named_parameters() if p.requires_grad and "lora_B" in n}
    assert lora_b and any(bool((p != 0).any()) for p in lora_b.values())
