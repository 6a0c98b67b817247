"""Credit / exploration variants on the shared trainer (issue 6), one iteration of the tiny SD3 each:
the extras the trainer collects, the advantages the loss is fed (recomputed here by hand from the
gathered rewards and extras in credit.jsonl), the sampler NFE count, and the weights moving.

Tiny setup (test_trainer.TINY): 4 steps, sigmas [1, .858, .602, .0089, 0], window 'all' = steps
0..2 SDE (trained), step 3 ODE; 2 prompts x 4 images in 2 sampling batches of 4; reward = brightness.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_trainer import PROMPTS, TINY

from flowalign.credit.turning_point import tp_grpo
from flowalign.train import apply_overrides, get_preset
from flowalign.train.data import group_batch
from flowalign.train.losses import flow_grpo_loss

close = torch.testing.assert_close


def bright(images, prompts, **metadata):
    return images.mean((1, 2, 3))


bright.differentiable = True


def zscore(v: torch.Tensor, groups: torch.Tensor, eps: float = 1e-4, unbiased: bool = False) -> torch.Tensor:
    """(v - group mean) / (group std + eps), column-wise for [N, K]."""
    out = torch.zeros_like(v)
    for g in groups.unique():
        m = groups == g
        out[m] = (v[m] - v[m].mean(0)) / (v[m].std(0, unbiased=unbiased) + eps)
    return out


def run(tmp_path, *extra, reward=bright, rollout_fn=None):
    """One iteration -> (result, credit.jsonl record as tensors, {step: (fed advantages, fed mask)}, moved)."""
    from flowalign.train.build import build_model
    from flowalign.train.loop import train

    cfg = apply_overrides(
        get_preset("testbed"),
        TINY + [f"train.output_dir={tmp_path / 'run'}", "train.save_every=0", "log.credit_jsonl=true", *extra],
    )
    model, _, _ = build_model(cfg)
    sig = model.sigmas(4, 16, 16)
    step_of = {round(float(sig[j + 1] - sig[j]), 6): j for j in range(4)}
    fed: dict[int, list] = {}

    def loss(out, ref, old, adv, mask, dt, **kw):  # records what the loss sees, per step
        fed.setdefault(step_of[round(dt, 6)], []).append((adv.clone(), mask.clone()))
        return flow_grpo_loss(out, ref, old, adv, mask, dt, **kw)

    before = {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}
    kw = {} if rollout_fn is None else {"rollout_fn": rollout_fn}
    res = train(cfg, model, reward, PROMPTS, run_dir=tmp_path / "run", loss_fn=loss, **kw)
    rec = json.loads((tmp_path / "run" / "credit.jsonl").read_text().splitlines()[0])
    rec = {k: torch.tensor(v) for k, v in rec.items() if k != "iteration"}
    moved = any(
        not torch.equal(before[n], p.detach()) for n, p in model.transformer.named_parameters() if p.requires_grad
    )
    fed = {j: (torch.cat([a for a, _ in v]), torch.cat([m for _, m in v])) for j, v in fed.items()}
    return res, rec, fed, moved


def check_fed(rec, fed):
    """The loss saw exactly the gathered advantages of every trained (sample, step) pair."""
    for j in range(4):
        want = rec["advantages"][:, j][rec["mask"][:, j]].sort().values
        got = fed[j][0][fed[j][1]].sort().values if j in fed else torch.zeros(0)
        close(got, want.float())


def test_dense_step_gains_of_the_reward_ladder(tmp_path):
    res, rec, fed, moved = run(tmp_path, "credit.name=dense")
    lad, r, g = rec["ladder"], rec["reward"], rec["group"]
    # the ladder's last entry is the reward of the final image itself; states 0..4 are all read
    close(lad[:, 4], r, atol=1e-6, rtol=0)
    assert torch.isfinite(lad).all() and lad.shape == (8, 5)
    # advantages = per-step, per-group z-scores of the gains d_j = ladder[:, j+1] - ladder[:, j]
    want = zscore(lad[:, 1:] - lad[:, :-1], g)[:, :3]
    close(rec["advantages"][:, :3], want, atol=1e-4, rtol=1e-4)
    assert rec["mask"][:, :3].all() and not rec["mask"][:, 3].any()
    check_fed(rec, fed)
    # NFE: 8 rollouts x 4 = 32; completions (first step from the sampling velocity, state 3 shares the
    # final image because step 3 is ODE): state 0: 3, state 1: 2, state 2: 1 -> 6 x 8 = 48
    assert res.nfe == 32 + 48 and res.history[0]["nfe/total"] == 80 and moved


def test_turning_points_use_the_ladder_and_sampling_batches(tmp_path):
    res, rec, fed, moved = run(tmp_path, "credit.name=turning_point")
    # rows are gathered in global sample order: batch b holds rows 4b..4b+3
    assert rec["balance_ids"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    want = tp_grpo(
        rec["reward"],
        rec["group"],
        torch.tensor([True, True, True, False]),
        ladder=rec["ladder"],
        balance_ids=rec["balance_ids"],
    )
    close(rec["advantages"], want.advantages, atol=1e-5, rtol=1e-5)
    assert torch.equal(rec["mask"], want.mask)
    check_fed(rec, fed)
    assert res.nfe == 80 and moved


def test_g2rpo_singular_step_and_granularities(tmp_path):
    res, rec, fed, moved = run(
        tmp_path,
        "credit.name=g2rpo",
        "sample.window=fixed",
        "sample.window_size=1",
        "sample.window.options.start=1",
        "sample.same_noise=true",
        "credit.strides=[1,2]",
    )
    gr, r, g = rec["granular"], rec["reward"], rec["group"]
    close(gr[:, 0], r)  # stride 1: the sampled image (only step 1 is SDE, the rest ODE)
    assert not torch.allclose(gr[:, 1], r)  # stride 2: state 2 -> sigma index 4 in one Euler step
    # advantage = sum over strides of the per-group z-scores, on step 1 only
    want = zscore(gr, g).sum(1)
    close(rec["advantages"][:, 1], want, atol=1e-4, rtol=1e-4)
    assert rec["mask"][:, 1].all() and not rec["mask"][:, [0, 2, 3]].any()
    check_fed(rec, fed)
    # NFE: 8 x 4 rollout steps + 8 x 1 strided completion step
    assert res.nfe == 32 + 8 and moved


def test_branchgrpo_depthwise_advantages_on_a_tree_batch(tmp_path):
    res, rec, fed, moved = run(tmp_path, "credit.name=branchgrpo", "sample.tree_splits=[0,1]", "sample.tree_branch=[2]")
    r, g = rec["reward"], rec["group"]
    # trees are whole groups in order: rows 0-3 one tree (prompt), rows 4-7 the other
    assert g.tolist()[:4] == [g[0].item()] * 4 and g.tolist()[4:] == [g[4].item()] * 4
    adv, mask = rec["advantages"], rec["mask"]
    for t in (slice(0, 4), slice(4, 8)):
        rr = r[t]
        # steps 1 and 2 enter nodes whose fused reward is their single leaf's: z-score over 4 nodes
        # (credit.unbiased=false, credit.eps=1e-4 replace BranchGRPO's unbiased std + 1e-8)
        z = (rr - rr.mean()) / (rr.std(unbiased=False) + 1e-4)
        close(adv[t, 1], z, atol=1e-4, rtol=1e-4)
        close(adv[t, 2], z, atol=1e-4, rtol=1e-4)
        # step 0 enters the two depth-1 nodes (fused = mean of 2 leaves m1, m2): population std
        # |m1 - m2| / 2 -> advantages +-h / (h + eps) with h = |m1 - m2| / 2
        m1, m2 = rr[:2].mean(), rr[2:].mean()
        h = (m1 - m2).abs() / 2
        close(adv[t, 0][[0, 2]], torch.sign(torch.stack([m1 - m2, m2 - m1])) * h / (h + 1e-4), atol=1e-4, rtol=1e-4)
        # each edge trains once: rows 1 and 3 share their step-0 edge with rows 0 and 2
        assert mask[t, 0].tolist() == [True, False, True, False] and mask[t, 1:3].all() and not mask[t, 3].any()
    check_fed(rec, fed)
    # NFE per tree: frontier sizes 1 + 2 + 4 + 4 = 11, two trees
    assert res.nfe == 22 and moved


def test_tree_pruning_and_depth_noise_reach_the_trained_edges(tmp_path, sd3_model):
    from flowalign.train.rollouts import tree_batch_rollout

    # depth pruning of child depth 3 = the edges of step 2 (steps 0 and 1 still train, each edge once)
    res, rec, fed, moved = run(
        tmp_path,
        "credit.name=branchgrpo",
        "sample.tree_splits=[0,1]",
        "sample.tree_branch=[2]",
        "credit.prune_depths=[3]",
    )
    assert rec["mask"][:, 0].sum() == 4 and rec["mask"][:, 1].all() and not rec["mask"][:, 2:].any()
    check_fed(rec, fed)
    assert moved
    # depth-dependent noise: level x (1 + 1.0 x depth / 2 splits); every node of a step has one depth
    cond = sd3_model.encode(["a red circle"] * 4, guidance_scale=4.5)
    x = sd3_model.initial_noise(4, 16, 16, generator=torch.Generator().manual_seed(0))
    ro = tree_batch_rollout(
        sd3_model,
        cond,
        x,
        sd3_model.sigmas(4, 16, 16),
        "flow_sde",
        torch.tensor([0.7, 0.7, 0.7, 0.0]),
        generator=torch.Generator().manual_seed(1),
        splits=(0, 1),
        branch=(2,),
        depth_noise=1.0,
    )
    close(ro.noise_levels, torch.tensor([0.7, 1.05, 1.4, 0.0]))
    assert ro.latents.shape[:2] == (4, 5) and ro.tree.num_nodes == 1 + 2 + 4 + 4 + 4


def test_treegrpo_bottom_up_advantages(tmp_path):
    res, rec, fed, moved = run(
        tmp_path, "credit.name=treegrpo", "sample.tree_splits=[0,1]", "sample.tree_branch=[2]", "credit.tree_beta=0"
    )
    r, adv = rec["reward"], rec["advantages"]
    for t in (slice(0, 4), slice(4, 8)):
        a = (r[t] - r[t].mean()) / (r[t].std(unbiased=False) + 1e-4)  # leaf advantages (population std)
        close(adv[t, 1], a, atol=1e-4, rtol=1e-4)
        close(adv[t, 2], a, atol=1e-4, rtol=1e-4)
        # beta = 0: a depth-1 node's edge gets the plain mean of its two children's advantages
        close(adv[t, 0][[0, 2]], torch.stack([a[:2].mean(), a[2:].mean()]), atol=1e-4, rtol=1e-4)
    check_fed(rec, fed)
    assert res.nfe == 22 and moved


def test_euphonium_guided_rollout_and_dual_advantages(tmp_path):
    res, rec, fed, moved = run(
        tmp_path,
        "credit.name=euphonium",
        "credit.options.reward_grad_scale=0.5",
        "sample.step=dance_sde",
        "sample.noise_level=0.5",
    )
    p, r, g = rec["process"], rec["reward"], rec["group"]
    assert (p[:, :3] != 0).all() and (p[:, 3] == 0).all()  # process scores on the 3 SDE steps only
    want = zscore(r[:, None], g)[:, 0:1] + zscore(p[:, :3], g)  # c_outcome = c_process = 1
    close(rec["advantages"][:, :3], want, atol=1e-4, rtol=1e-4)
    check_fed(rec, fed)
    assert res.nfe == 32 and moved  # guidance costs reward gradients, no velocity evaluations


def test_calibrated_noise_table_drives_the_sampler(tmp_path):
    from flowalign.sampling.rollout import rollout

    seen = []

    def spy(*args, **kw):
        out = rollout(*args, **kw)
        seen.append(out.noise_levels.clone())
        return out

    res, rec, fed, moved = run(
        tmp_path, "credit.name=dense", "credit.calibrate_iterations=2", "credit.calibrate_samples=4", rollout_fn=spy
    )
    table = json.loads((tmp_path / "run" / "config.json").read_text())["sample"]["noise_levels"]
    assert len(table) == 4 and table != [0.7] * 4
    # the training rollouts use the calibrated table on the trained steps, 0 (ODE) on the last
    close(seen[-1], torch.tensor(table[:3] + [0.0]))
    # calibration NFE: round 1: 4 SDE rollouts (16) + completions of states 0..3 (4+3+2+1 = 10 each,
    # 40); round 2: the same but the initial states' completions are cached (-16) -> 56 + 40 = 96
    assert res.nfe - res.history[0]["nfe/iteration"] == 96 and moved


def test_shared_prefix_rollout_equals_the_flat_rollout(sd3_model):
    from flowalign.sampling.rollout import rollout
    from flowalign.train.rollouts import shared_prefix_rollout, whole_group_batch

    m = sd3_model
    cond = m.encode(["a red circle", "a red circle", "two blue squares", "a red circle"], guidance_scale=4.5)
    x0 = m.initial_noise(2, 16, 16, generator=torch.Generator().manual_seed(0))
    x = x0[[0, 0, 1, 1]]  # rows 0, 1 share noise and prompt; rows 2, 3 share noise, not prompt
    sig, levels = m.sigmas(4, 16, 16), torch.tensor([0.0, 0.0, 0.7, 0.0])
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(4)]  # noqa: E731
    n0 = m.nfe
    flat = rollout(m, cond, x, sig, "flow_sde", levels, generator=gens(), keep_x0=True)
    n1 = m.nfe
    shared = shared_prefix_rollout(m, cond, x, sig, "flow_sde", levels, generator=gens(), keep_x0=True)
    # flat: 4 x 4 = 16; shared: 3 distinct rows x 2 prefix steps + 4 x 2 = 14
    assert (n1 - n0, m.nfe - n1, shared.nfe) == (16, 14, 14)
    close(shared.latents, flat.latents, atol=1e-5, rtol=1e-5)
    close(shared.log_probs, flat.log_probs, atol=1e-4, rtol=1e-4)
    close(shared.x0_preds, flat.x0_preds, atol=1e-5, rtol=1e-5)
    # whole-group layout: the same prompts and groups as group_batch, sorted by group
    p1, g1 = group_batch(10, 4, 8, 2, 0, 3, 5)
    p2, g2 = group_batch(10, 4, 8, 2, 1, 3, 5)
    w = [whole_group_batch(10, 4, 8, 2, r, 3, 5) for r in (0, 1)]
    assert sorted(zip(p1 + p2, g1 + g2)) == sorted(zip(w[0][0] + w[1][0], w[0][1] + w[1][1]))
    assert all(len(set(gs[:4])) == 1 and len(set(gs[4:])) == 1 for _, gs in w)


class Flat(torch.nn.Module):
    name, differentiable = "flat", False

    def forward(self, images, prompts, **m):
        return images.mean((1, 2, 3)).round()


def make_flat(**kw):
    return Flat()


def test_bad_credit_config_is_one_clear_error(tmp_path, monkeypatch):
    import sys
    import types

    from flowalign.train.checks import validate
    from flowalign.train.loop import train

    cfg = lambda *o: apply_overrides(get_preset("testbed"), TINY + list(o))  # noqa: E731
    tree = ["credit.name=branchgrpo", "sample.tree_branch=[2]"]
    with pytest.raises(ValueError, match=r"split_steps=\[0, 5\] must be step indices in \[0, 3\]"):
        validate(cfg(*tree, "sample.tree_splits=[0,5]"))
    with pytest.raises(ValueError, match=r"split_steps=\[1, 0\] must be strictly increasing"):
        validate(cfg(*tree, "sample.tree_splits=[1,0]"))
    with pytest.raises(ValueError, match=r"credit.options.branch=\[0\] \(entry 0\) is out of range: it must be >= 1"):
        validate(cfg("credit.name=branchgrpo", "sample.tree_splits=[0,1]", "sample.tree_branch=[0]"))
    # tree rollouts are the tree schemes' own options: a flat scheme has none to set
    with pytest.raises(ValueError, match=r"unknown config key 'credit.options.splits'"):
        validate(cfg("credit.name=dense", "sample.tree_splits=[0,1]"))
    with pytest.raises(ValueError, match=r"SDE window of 6 steps in range \[0, 4\) does not fit 4 steps"):
        validate(cfg("sample.window=random", "sample.window_size=6", "sample.window_range=[0,4]"))
    with pytest.raises(ValueError, match="g2rpo samples singularly"):
        validate(cfg("credit.name=g2rpo"))
    with pytest.raises(ValueError, match="sample.noise_levels has 2 values"):
        validate(cfg("sample.noise_table=[0.5,0.5]"))
    # a non-differentiable process reward for the guided SDE: refused before any model is built
    monkeypatch.setitem(sys.modules, "flat_reward_mod", types.SimpleNamespace(make=make_flat))
    with pytest.raises(ValueError, match="process reward 'MultiReward' is not differentiable"):
        validate(cfg("credit.name=euphonium", 'reward.weights={"flat_reward_mod:make": 1}'))
    from flowalign.train.build import build_model

    c = cfg("credit.name=euphonium", f"train.output_dir={tmp_path}")
    with pytest.raises(ValueError, match="process reward 'flat' is not differentiable"):
        train(c, build_model(c)[0], bright, PROMPTS, run_dir=tmp_path, process_reward=Flat())


@pytest.mark.slow
@pytest.mark.parametrize(
    "scheme",
    [
        ["credit.name=dense", "sample.same_noise=true"],
        ["credit.name=branchgrpo", "sample.tree_splits=[0,1]", "sample.tree_branch=[2]"],
    ],
)
def test_two_processes_gather_the_extras_like_one(tmp_path, scheme):
    """2 ranks x 8 vs 1 rank x 16: the gathered extras (ladders / per-tree advantages) and the credit
    computed from them are the same (each device runs the same batches of 4 rows in both layouts)."""
    import os
    import subprocess
    import sys

    from test_trainer import RUNNER
    from test_trainer_multiprocess import _free_port

    from flowalign.train import run as train_cli

    over = TINY + ["sample.groups_per_iteration=4", "log.credit_jsonl=true", "train.save_every=0", *scheme]
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "FA_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(runner),
        *over,
        f"train.output_dir={tmp_path / 'two'}",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cfg, _ = train_cli.resolve_config(None, over + [f"train.output_dir={tmp_path / 'one'}"], None)
    train_cli.main(cfg, reward_fn=bright, prompts=PROMPTS)
    two, one = (json.loads((tmp_path / d / "credit.jsonl").read_text().splitlines()[0]) for d in ("two", "one"))
    for key in ("ladder", "tree_advantages", "advantages", "reward"):
        if key in one:
            close(torch.tensor(two[key]), torch.tensor(one[key]), atol=1e-4, rtol=0)
    assert two["mask"] == one["mask"] and two["group"] == one["group"]


def test_variant_presets_pass_the_config_checks():
    from flowalign.train import derived
    from flowalign.train.checks import check_variants
    from flowalign.train.presets import PRESETS

    names = [n for n in PRESETS if n.startswith("testbed_")]
    assert {
        "testbed_dense",
        "testbed_g2rpo",
        "testbed_branchgrpo",
        "testbed_treegrpo",
        "testbed_euphonium",
        "testbed_artifact_reg",
    } <= set(names)
    for n in names:
        cfg = get_preset(n)
        check_variants(cfg)
        assert derived(cfg, 1).images_per_iteration == 32 and cfg.preset == n
