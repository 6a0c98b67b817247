"""The Flow-GRPO trainer on the tiny real SD3 pipeline: config arithmetic and errors, which weights a
step changes, the exported LoRA in a stock pipeline, non-finite rewards / losses, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowalign.train import apply_overrides, derived, get_preset
from flowalign.train import checkpoint as ckpt
from flowalign.train.data import PromptSet
from flowalign.train.resume import resolve_resume

TINY_TARGETS = (
    "attn.to_q,attn.to_k,attn.to_v,attn.to_out.0,attn.add_k_proj,attn.add_v_proj"  # add_q_proj: dead in a 1-layer SD3
)
# 16 px images (8x8 latents), 4 steps (3 trained), 2 prompts x 4 images in batches of 4, no eval
TINY = [
    "model.path=tiny-sd3",
    "model.resolution=16",
    f"model.lora_targets={TINY_TARGETS}",
    "model.lora_rank=4",
    "model.lora_alpha=8",
    "sample.num_steps=4",
    "sample.window=all",
    "sample.timestep_fraction=0.99",
    "sample.same_noise=false",
    "sample.group_size=4",
    "sample.groups_per_iteration=2",
    "sample.batch_size=4",
    "eval.every=0",
    "train.ema=false",
    "train.iterations=1",
    "log.progress=false",
    "optim.lr=1e-2",
    "loss.clip_range=0.2",
]
PROMPTS = PromptSet(["a red circle", "two blue squares", "a green triangle", "a yellow star"], [{}] * 4)


def brightness(images, prompts, **metadata):
    return images.mean((1, 2, 3))


def tiny_cfg(tmp_path, *extra):
    cfg = get_preset("testbed")
    return apply_overrides(cfg, TINY + [f"train.output_dir={tmp_path / 'run'}", *extra])


# A script that trains the tiny config with the brightness reward (for subprocess / multi-process
# tests): argv = [--resume=auto] overrides...; FA_THREADS sets torch threads, FA_DUMP a folder
# where every rank writes its final trainable weights.
RUNNER = r"""
import os, sys
import torch
torch.set_num_threads(int(os.environ.get("FA_THREADS", "1")))
from flowalign.train import run as train_cli
from flowalign.train.resume import resolve_resume
from flowalign.train import apply_overrides, get_preset
from flowalign.train.data import PromptSet
args = sys.argv[1:]
resume = args.pop(0).split("=", 1)[1] if args and args[0].startswith("--resume=") else None
cfg = apply_overrides(get_preset("testbed"), args)
if resume:
    resume = resolve_resume(resume, cfg.train.output_dir, cfg.train.runs_dir, cfg.preset)
prompts = PromptSet(["a red circle", "two blue squares", "a green triangle", "a yellow star"], [{}] * 4)
res = train_cli.main(cfg, reward_fn=lambda im, p, **m: im.mean((1, 2, 3)), prompts=prompts, resume=resume)
if os.environ.get("FA_DUMP"):
    from safetensors.torch import save_file
    rank = int(os.environ.get("RANK", "0"))
    t = {n: p.detach().contiguous() for n, p in res.model.transformer.named_parameters() if p.requires_grad}
    save_file(t, os.path.join(os.environ["FA_DUMP"], f"rank{rank}.safetensors"))
"""


# --- config -----------------------------------------------------------------------------------------
def test_overrides_types_and_unknown_keys():
    cfg = apply_overrides(
        get_preset("testbed"),
        [
            "sample.num_steps=8",
            "optim.lr=2e-4",
            "train.ema=false",
            "data.eval=none",
            "model.lora_targets=attn.to_q,attn.to_k",
            "reward.weights.hpsv2=0.5",
            "optim.betas=[0.9, 0.99]",
        ],
    )
    assert cfg.sample.num_steps == 8 and cfg.optim.lr == 2e-4 and cfg.train.ema is False and cfg.data.eval is None
    assert cfg.model.lora_targets == ["attn.to_q", "attn.to_k"] and cfg.optim.betas == [0.9, 0.99]
    assert cfg.reward.weights == {"compositional": 1.0, "hpsv2": 0.5}
    with pytest.raises(ValueError, match=r"unknown config key 'sample.num_step'.*did you mean \['num_steps'"):
        apply_overrides(cfg, ["sample.num_step=3"])
    with pytest.raises(ValueError, match="cannot read 'many' as"):
        apply_overrides(cfg, ["sample.num_steps=many"])
    with pytest.raises(ValueError, match="unknown preset 'sd4'.*flux_hpsv2"):
        get_preset("sd4")


def test_derived_batch_arithmetic_by_hand():
    # SD3.5 recipe: 48 groups x 24 = 1152 images; 32 ranks -> 36 per rank = 4 batches of 9;
    # 2 optimizer steps -> accumulate 2 micro-batches x 9 trained steps (int(10 x .99)) = 18 backwards
    d = derived(get_preset("sd35_pickscore"), 32)
    assert (d.images_per_rank, d.batches_per_rank, d.grad_accum, d.trained_steps, d.backward_per_step) == (
        36,
        4,
        2,
        9,
        18,
    )
    # Flux: batch 3 -> 1152 / 8 ranks = 144 -> 48 batches -> 24 per step, 6 trained steps (int(6 x .99) = 5)
    d = derived(get_preset("flux_hpsv2"), 8)
    assert (d.batches_per_rank, d.grad_accum, d.trained_steps) == (48, 24, 5)
    for name in ("testbed", "sd35_pickscore", "sd35_compositional", "flux_hpsv2"):
        derived(get_preset(name), 1)
    with pytest.raises(ValueError, match="1152 images per iteration do not split over 5 processes"):
        derived(get_preset("sd35_pickscore"), 5)
    with pytest.raises(ValueError, match="48 images per process .* sample.batch_size=9"):
        derived(get_preset("sd35_pickscore"), 24)
    with pytest.raises(ValueError, match="SDE window of 3 steps in range \\[0, 12\\) does not fit 10 steps"):
        derived(
            apply_overrides(
                get_preset("sd35_pickscore"),
                ["sample.window=random", "sample.window_size=3", "sample.window_range=0,12"],
            ),
            1,
        )


# --- start-up errors -------------------------------------------------------------------------------
def test_startup_errors(tmp_path):
    from flowalign.train.build import build_model
    from flowalign.train.checks import validate

    cfg = tiny_cfg(tmp_path)
    with pytest.raises(ValueError, match=r"unknown reward\(s\) \['pickscor'\]; choose from .*'pickscore'"):
        validate(apply_overrides(tiny_cfg(tmp_path), ['reward.weights={"pickscor": 1}']))
    with pytest.raises(
        ValueError, match=r"reward 'my_geneval:load' cannot be imported \(No module named 'my_geneval'\)"
    ):
        validate(apply_overrides(tiny_cfg(tmp_path), ['reward.weights={"my_geneval:load": 1}']))
    with pytest.raises(ValueError, match="model.path='/nope/sd3' does not exist; pass model.path=<a directory"):
        validate(apply_overrides(tiny_cfg(tmp_path), ["model.path=/nope/sd3"]))
    with pytest.raises(ValueError, match="16 images per iteration do not split over 3 processes"):
        validate(apply_overrides(tiny_cfg(tmp_path), ["sample.groups_per_iteration=4"]), world_size=3)
    with pytest.raises(ValueError, match=r"objective.kind='grpo' is unknown; choose one of \['flow_grpo', 'nft'"):
        validate(apply_overrides(tiny_cfg(tmp_path), ["loss.objective=grpo"]))
    with pytest.raises(ValueError, match=r"objective.options.nft_beta=0.0 is out of range: it must be > 0"):
        validate(apply_overrides(tiny_cfg(tmp_path), ["loss.objective=nft", "loss.nft_beta=0"]))
    (tmp_path / "empty.txt").write_text("\n")
    from flowalign.train.build import build_prompts

    with pytest.raises(ValueError, match="holds no prompts"):
        build_prompts(apply_overrides(tiny_cfg(tmp_path), [f"data.train={tmp_path / 'empty.txt'}"]))
    # the 1-layer tiny transformer has no to_add_out (its only block is context_pre_only)
    with pytest.raises(
        ValueError,
        match=r"LoRA target module\(s\) \['attn.to_add_out'\] are not in the "
        r"SD3Transformer2DModel; .*e.g. \[.*'attn.to_q'",
    ):
        build_model(apply_overrides(cfg, [f"model.lora_targets={TINY_TARGETS},attn.to_add_out"]))


def test_cli_reports_one_clear_error(capsys):
    from flowalign.cli import main

    assert main(["train", "sd4"]) == 2
    assert "unknown preset 'sd4'" in capsys.readouterr().err
    assert main(["train", "sample.num_steps=7", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["sample"]["num_steps"] == 7


# --- a training step: which parameters move, the exported LoRA ---------------------------------------
def test_step_changes_only_trainable_params_and_lora_loads_in_stock_pipeline(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from flowalign.models.tiny import tiny_sd3_pipeline
    from flowalign.train.build import build_model
    from flowalign.train.loop import train

    # one prompt group, one batch, one optimizer step per iteration: every trained step is on-policy
    cfg = tiny_cfg(tmp_path, "sample.groups_per_iteration=1", "optim.steps_per_iteration=1", "train.iterations=2")
    model, export_fn, _ = build_model(cfg)
    pipe = model.pipe
    before = {
        f"{c}.{n}": p.detach().clone()
        for c, m in pipe.components.items()
        if isinstance(m, torch.nn.Module)
        for n, p in m.named_parameters()
    }
    trainable = {f"transformer.{n}" for n, p in model.transformer.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    res = train(cfg, model, brightness, PROMPTS, run_dir=tmp_path / "run", export_fn=export_fn)
    first = res.history[0]
    # on-policy: recomputed log-probs equal the sampling-time ones bit for bit -> ratio exactly 1
    assert first["train/ratio_max"] == first["train/ratio_min"] == 1.0 and first["train/approx_kl"] == 0.0
    assert res.state.optimizer_step == 2 and res.state.skipped_steps == 0
    after = {
        f"{c}.{n}": p.detach()
        for c, m in pipe.components.items()
        if isinstance(m, torch.nn.Module)
        for n, p in m.named_parameters()
    }
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == trainable  # every LoRA tensor moved (2 steps: lora_A gets gradient once B != 0), nothing else

    # the exported adapter in a stock StableDiffusion3Pipeline reproduces our transformer's output
    stock = tiny_sd3_pipeline(seed=0)
    stock.set_progress_bar_config(disable=True)
    kw = dict(prompt=["a red circle"], num_inference_steps=3, height=16, width=16, guidance_scale=4.5, output_type="pt")
    plain = stock(generator=torch.Generator().manual_seed(0), **kw).images
    assert isinstance(stock, StableDiffusion3Pipeline)
    stock.load_lora_weights(str(tmp_path / "run" / "lora"))
    loaded = stock(generator=torch.Generator().manual_seed(0), **kw).images
    assert (loaded - plain).abs().max() > 1e-4  # the adapter changes the output
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = model.encode(["a red circle", "a yellow star"], guidance_scale=4.5)
    v_ours = model.velocity(x, 0.7, cond)
    model.transformer = stock.transformer
    torch.testing.assert_close(model.velocity(x, 0.7, cond), v_ours, atol=1e-5, rtol=1e-5)
    # the checkpoint holds the same adapter, loadable the same way
    assert (ckpt.latest(tmp_path / "run") / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_nft_objective_on_policy_and_resumes_exactly(tmp_path):
    from flowalign.train.build import build_model
    from flowalign.train.loop import train

    def run(name, iterations, resume=None):
        cfg = tiny_cfg(
            tmp_path,
            "loss.objective=nft",
            "loss.beta=1e-3",
            "optim.lr=1e-2",
            "sample.groups_per_iteration=1",
            "optim.steps_per_iteration=1",
            f"train.iterations={iterations}",
            f"train.output_dir={tmp_path / name}",
        )
        model, export_fn, _ = build_model(cfg)
        before = {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}
        res = train(cfg, model, brightness, PROMPTS, run_dir=tmp_path / name, export_fn=export_fn, resume=resume)
        after = {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}
        return res, before, after

    full, before, after = run("full", 3)
    # one optimizer step per iteration: every unit sees the sampling weights, so v == v_old exactly (the
    # NFT analogue of ratio == 1 on-policy), the KL to the reference is > 0 after the first step
    assert [h["train/old_deviation"] for h in full.history] == [0.0, 0.0, 0.0]
    assert full.history[0]["train/kl"] == 0.0 < full.history[2]["train/kl"]
    assert full.state.optimizer_step == 3 and all(not torch.equal(before[n], after[n]) for n in before)
    # a run stopped after 2 iterations and resumed for the third ends bitwise equal (seeded forward noise)
    run("cut", 2)
    resumed, _, end = run("cut", 3, resume=ckpt.latest(tmp_path / "cut"))
    assert resumed.state.iteration == 3 and all(torch.equal(end[n], after[n]) for n in after)


# --- non-finite rewards and losses -------------------------------------------------------------------
def test_nonfinite_reward_and_loss_skip_and_never_reach_weights(tmp_path):
    from flowalign.train.build import build_model
    from flowalign.train.loop import train
    from flowalign.train.losses import flow_grpo_loss

    cfg = tiny_cfg(tmp_path, "train.iterations=3", "optim.steps_per_iteration=2", "sample.groups_per_iteration=2")
    model, export_fn, _ = build_model(cfg)
    params = lambda: {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}  # noqa: E731
    start, calls = params(), {"reward": 0, "loss": 0}

    def reward(images, prompts, **m):  # iteration 0: all NaN; iteration 1: one row inf; then finite
        calls["reward"] += 1
        r = images.mean((1, 2, 3))
        if calls["reward"] <= 2:
            return torch.full_like(r, float("nan"))
        if calls["reward"] == 3:
            r[0] = float("inf")
        return r

    def loss(*args, **kw):  # the first loss of iteration 1 is NaN
        calls["loss"] += 1
        out = flow_grpo_loss(*args, **kw)
        if calls["loss"] == 1:
            out.loss = out.loss * float("nan")
        return out

    res = train(cfg, model, reward, PROMPTS, run_dir=tmp_path / "run", loss_fn=loss, export_fn=export_fn)
    s = res.state
    # iteration 0 skipped (8 NaN rewards, none finite); iteration 1: the inf row masked (8 + 1 = 9
    # non-finite rows), its first optimizer step (3 steps x 1 micro-batch) skipped, the second
    # taken; iteration 2: both taken -> 3 steps
    assert (s.skipped_iterations, s.nonfinite_reward_rows, s.skipped_steps, s.optimizer_step) == (1, 9, 1, 3)
    assert res.history[0]["skipped/iterations"] == 1 and res.history[1]["skipped/steps"] == 1
    end = params()
    assert all(torch.isfinite(t).all() for t in end.values())
    assert any(not torch.equal(start[n], end[n]) for n in start)
    parts, scalars = ckpt.load(ckpt.latest(tmp_path / "run"))
    assert scalars["skipped_steps"] == 1
    assert all(torch.isfinite(t).all() for t in parts["trainable"].values())
    assert math.isfinite(json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["train/loss"])


# --- checkpoint files ----------------------------------------------------------------------------------
def test_checkpoint_roundtrip_atomic_names_and_keep_last(tmp_path):
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    for it in (1, 2, 3):
        ckpt.save(tmp_path, it, {"trainable": {"w": p}, "optimizer": opt.state_dict()}, {"iteration": it}, keep_last=2)
    assert [i for i, _ in ckpt.checkpoints(tmp_path)] == [2, 3]  # keep_last=2
    (tmp_path / "checkpoints" / ".tmp-checkpoint-000004").mkdir()  # a save killed before its rename
    (tmp_path / "checkpoints" / "checkpoint-000005").mkdir()  # no state.json: incomplete
    assert ckpt.latest(tmp_path).name == "checkpoint-000003"
    assert resolve_resume("auto", tmp_path, "runs", "x") == ckpt.latest(tmp_path)
    parts, scalars = ckpt.load(ckpt.latest(tmp_path))
    assert torch.equal(parts["trainable"]["w"], p.detach()) and scalars["iteration"] == 3
    state = opt.state_dict()
    assert torch.equal(parts["optimizer"]["state"][0]["exp_avg_sq"], state["state"][0]["exp_avg_sq"])
    assert parts["optimizer"]["param_groups"][0]["betas"] == state["param_groups"][0]["betas"]
    assert torch.equal(parts["rng"]["torch"], torch.get_rng_state())
    with pytest.raises(RuntimeError, match="non-finite values in \\['w'\\]"):
        ckpt.save(tmp_path, 6, {"trainable": {"w": torch.tensor([float("nan")])}}, {})
    assert ckpt.latest(tmp_path).name == "checkpoint-000003"


# --- SDE windows and EMA ----------------------------------------------------------------------------
def test_step_masks_by_window_kind():
    from flowalign.train.phases import step_mask

    cfg = get_preset("sd35_pickscore")  # 10 steps, timestep_fraction .99 -> int(9.9) = 9: all but the last
    assert step_mask(cfg, 0).tolist() == [True] * 9 + [False]
    apply_overrides(cfg, ["sample.window=random", "sample.window_size=3", "sample.window_range=0,5"])
    masks = [step_mask(cfg, it) for it in range(30)]
    assert all(torch.equal(m, step_mask(cfg, it)) for it, m in enumerate(masks))  # a function of (seed, it)
    starts = {int(m.int().argmax()) for m in masks}
    assert all(int(m.sum()) == 3 for m in masks) and starts == {0, 1, 2}  # start uniform in [0, 5 - 3]
    apply_overrides(cfg, ["sample.window=progressive", "sample.window_every=4"])
    assert [int(step_mask(cfg, it).int().argmax()) for it in (0, 3, 4, 8, 28, 32)] == [0, 0, 1, 2, 7, 0]


def test_ema_by_hand():
    from flowalign.train.ema import EMA

    p = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([p], max_decay=0.9, every=2)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update(0)  # decay min(.9, 1/10) = .1: shadow = .1 * 0 + .9 * 1 = .9
    ema.update(1)  # not a multiple of every=2: no change
    with torch.no_grad():
        p.fill_(2.0)
    ema.update(2)  # decay min(.9, 3/12) = .25: shadow = .25 * .9 + .75 * 2 = 1.725
    torch.testing.assert_close(ema.shadow[0], torch.full((2,), 1.725))
    with ema.swapped():
        assert torch.equal(p.detach(), torch.full((2,), 1.725))
    assert torch.equal(p.detach(), torch.full((2,), 2.0))
