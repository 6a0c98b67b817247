"""FLUX.2 (Klein and dev) and FLUX.1 Kontext adapters against the stock diffusers pipelines, tiny offline.

What must hold: a noise-free flowalign rollout + decode reproduces each pipeline's ``__call__``
(``output_type="pt"``, fp32, same seed / steps / guidance) to <= 1e-5, every step included; stored SDE
log-probs recompute to <= 1e-6; one Flow-GRPO iteration with LoRA moves exactly the adapters (FLUX.2
through the trainer, Kontext by hand: the trainer cannot pass source images); the exported LoRA loads
into the stock pipeline with ``load_lora_weights`` and its output equals flowalign's own ODE sampling
with the LoRA active (<= 1e-5); bad input is one ValueError naming the value.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from flowalign.models import FAMILIES, MODELS, detect_family, load_model
from flowalign.models.flux2 import FLUX2_LORA_TARGETS, Flux2Model
from flowalign.models.flux_kontext import FluxKontextModel
from flowalign.models.tiny_flux2 import tiny_flux2_klein_pipeline, tiny_flux2_pipeline, tiny_flux_kontext_pipeline
from flowalign.sampling.rollout import log_prob_at, rollout
from flowalign.sampling.sde import STEPS

PROMPTS = ["two red circles", "a blue square left of a green star"]
SEQ = {"klein": 32, "dev": 64, "kontext": 32}  # max_sequence_length of each tiny pipeline
BUILD = {"klein": tiny_flux2_klein_pipeline, "dev": tiny_flux2_pipeline, "kontext": tiny_flux_kontext_pipeline}
KONTEXT_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_v_proj"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _source(h=32, w=48, n=2, seed=1):
    return torch.rand(n, 3, h, w, generator=_gen(seed))


def _adapter(kind, pipe):
    cls = FluxKontextModel if kind == "kontext" else Flux2Model
    return cls(pipe, max_sequence_length=SEQ[kind])


@pytest.fixture(scope="module")
def pipes():
    out = {k: build(seed=0) for k, build in BUILD.items()}
    for p in out.values():
        p.set_progress_bar_config(disable=True)
    return out


@pytest.fixture(scope="module")
def models(pipes):
    return {k: _adapter(k, p) for k, p in pipes.items()}


def _stock(pipe, kind, h, w, steps, scale, seed, src=None):
    """The pipeline's own __call__ -> (images [B,3,H,W], latents after every step [B,T,N,D])."""
    states = []

    def grab(_pipe, i, t, tensors):
        states.append(tensors["latents"].clone())
        return {}

    kw = dict(image=src, max_area=h * w, _auto_resize=False) if kind == "kontext" else {}
    images = pipe(
        prompt=PROMPTS,
        height=h,
        width=w,
        num_inference_steps=steps,
        guidance_scale=scale,
        generator=_gen(seed),
        output_type="pt",
        max_sequence_length=SEQ[kind],
        callback_on_step_end=grab,
        **kw,
    ).images
    return images, torch.stack(states, 1)


@torch.no_grad()
def _ours(model, h, w, steps, scale, seed, src=None):
    kw = {} if src is None else {"images": src}
    cond = model.encode(PROMPTS, guidance_scale=scale, **kw)
    x = model.initial_noise(len(PROMPTS), h, w, _gen(seed))
    ro = rollout(model, cond, x, model.sigmas(steps, h, w), "ode", None)
    return model.decode(ro.final, h, w), ro


# --- 1. exactness vs the stock __call__ ------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,scale,pil",
    [
        ("klein", 4.0, False),
        ("klein", 1.0, False),
        ("dev", 4.0, False),
        ("kontext", 3.5, False),
        ("kontext", 2.5, True),
    ],
)
def test_ode_rollout_reproduces_stock_pipeline(pipes, models, kind, scale, pil):
    h, w, steps = 32, 48, 4
    src = _source(h, w) if kind == "kontext" else None
    if pil:
        from PIL import Image

        src = [Image.fromarray((s.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for s in src]
    images, states = _stock(pipes[kind], kind, h, w, steps, scale, seed=5, src=src)
    ours, ro = _ours(models[kind], h, w, steps, scale, seed=5, src=src)
    assert ro.latents.shape[2] == (h // 4) * (w // 4)  # VAE factor 2 x 2x2 packing -> tokens
    assert (ro.latents[:, 1:] - states).abs().max().item() <= 1e-5  # every step (measured: 0.0)
    assert (ours - images).abs().max().item() <= 1e-5  # measured: 0.0
    assert ro.nfe == len(PROMPTS) * steps  # Klein's CFG pair counts once per row


def test_sigmas_equal_the_pipelines_schedule(models):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    model = models["klein"]
    for steps in (1, 4, 28):
        for h, w in ((32, 32), (64, 32), (1024, 1024)):  # 1024 px: 65536 tokens, the > 4300 branch of mu
            ref = FlowMatchEulerDiscreteScheduler.from_config(model.pipe.scheduler.config)
            mu = compute_empirical_mu((h // 4) * (w // 4), steps)
            ref.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
            assert torch.equal(model.sigmas(steps, h, w), ref.sigmas)


# --- log-probs, rows -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["klein", "dev", "kontext"])
@pytest.mark.parametrize("step", sorted(k for k in STEPS if k != "ode"))
def test_recomputed_log_probs_equal_sampling_time(models, kind, step):
    model, steps = models[kind], 4
    kw = {"images": _source(32, 32)} if kind == "kontext" else {}
    with torch.no_grad():
        cond = model.encode(PROMPTS, guidance_scale=3.0, **kw)
        x = model.initial_noise(2, 32, 32, _gen(11))
        ro = rollout(model, cond, x, model.sigmas(steps, 32, 32), step=step, noise_levels=0.7, generator=_gen(12))
    assert bool((ro.log_probs[:, :3] != 0).all())
    with torch.enable_grad():  # the training path
        again = torch.stack([log_prob_at(model, cond, ro, j).log_prob.detach() for j in range(steps)], 1)
    assert (again - ro.log_probs).abs().max().item() <= 1e-6


@pytest.mark.parametrize("kind", ["klein", "kontext"])
def test_selected_and_repeated_conds_carry_negatives_and_source_latents(models, kind):
    model = models[kind]
    kw = {"images": _source(32, 32)} if kind == "kontext" else {}
    cond = model.encode(PROMPTS, guidance_scale=4.0, **kw)
    assert ("context" if kind == "kontext" else "negative_embeds") in cond.embeds
    x = model.initial_noise(2, 32, 32, _gen(0))
    with torch.no_grad():
        v = model.velocity(x, torch.tensor([0.9, 0.4]), cond)
        v_rep = model.velocity(x.repeat_interleave(2, 0), torch.tensor([0.9, 0.9, 0.4, 0.4]), cond.repeat(2))
        v_sel = model.velocity(x[[1]], 0.4, cond.select([1]))
    assert (v_rep - v.repeat_interleave(2, 0)).abs().max().item() <= 1e-5
    assert (v_sel - v[[1]]).abs().max().item() <= 1e-5


# --- 2 + 3. one Flow-GRPO iteration with LoRA; the exported adapter in the stock pipeline -----------
def _params(pipe):
    return {
        f"{c}.{n}": p.detach().clone()
        for c, m in pipe.components.items()
        if isinstance(m, torch.nn.Module)
        for n, p in m.named_parameters()
    }


def _changed(before, pipe):
    return {n for n, p in _params(pipe).items() if not torch.equal(before[n], p)}


def _stock_with_lora(kind, lora_dir, h, w, steps, scale, src=None):
    stock = BUILD[kind](seed=0)
    stock.set_progress_bar_config(disable=True)
    plain = _stock(stock, kind, h, w, steps, scale, seed=3, src=src)[0]
    stock.load_lora_weights(str(lora_dir))
    return plain, _stock(stock, kind, h, w, steps, scale, seed=3, src=src)[0]


# 16 px (4x4 latents -> 2x2 tokens), 4 steps (3 trained), one group of 4, one optimizer step, Klein's CFG on
TRAIN_TINY = [
    *["model.path=tiny-flux2", "model.resolution=16", "model.max_sequence_length=32", "model.lora_rank=4"],
    *["model.lora_alpha=8", f"model.lora_targets={','.join(FLUX2_LORA_TARGETS)}", "sample.num_steps=4"],
    *["sample.window=all", "sample.window.options.fraction=0.99", "sample.same_noise=false", "sample.group_size=4"],
    *["sample.groups_per_iteration=1", "sample.batch_size=4", "eval.every=0", "train.ema=false", "train.iterations=1"],
    *["log.progress=false", "optim.lr=1e-2", "optim.steps_per_iteration=1", "objective.options.clip_range=0.2"],
]


def test_flux2_trainer_iteration_moves_lora_and_export_loads_in_stock(tmp_path):
    from flowalign.train import apply_overrides, get_preset
    from flowalign.train.build import build_model
    from flowalign.train.data import PromptSet
    from flowalign.train.loop import train

    cfg = apply_overrides(get_preset("testbed"), [*TRAIN_TINY, f"train.output_dir={tmp_path / 'run'}"])
    model, export_fn, _ = build_model(cfg)
    assert isinstance(model, Flux2Model) and model.true_cfg and cfg.sample.guidance_scale > 1
    before = _params(model.pipe)
    trainable = {f"transformer.{n}" for n, p in model.transformer.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    prompts = PromptSet(["a red circle", "two blue squares"], [{}] * 2)
    res = train(
        cfg, model, lambda im, p, **m: im.mean((1, 2, 3)), prompts, run_dir=tmp_path / "run", export_fn=export_fn
    )
    first = res.history[0]
    assert first["train/ratio_max"] == first["train/ratio_min"] == 1.0  # on-policy: log-probs recomputed exactly
    changed = _changed(before, model.pipe)
    assert changed and changed <= trainable and any(".lora_B." in n for n in changed)  # only adapters moved

    h = w = 16
    plain, loaded = _stock_with_lora("klein", tmp_path / "run" / "lora", h, w, 3, cfg.sample.guidance_scale)
    model.nfe = 0
    with torch.no_grad():
        cond = model.encode(PROMPTS, guidance_scale=cfg.sample.guidance_scale)
        x = model.initial_noise(2, h, w, _gen(3))
        ours = model.decode(rollout(model, cond, x, model.sigmas(3, h, w), "ode", None).final)
    assert (loaded - plain).abs().max().item() > 1e-6  # the adapter changes the stock output
    assert (ours - loaded).abs().max().item() <= 1e-5  # measured: 0.0


def test_kontext_grpo_step_moves_lora_and_export_loads_in_stock(tmp_path):
    from peft import LoraConfig

    from flowalign.train.checkpoint import export_lora
    from flowalign.train.losses import flow_grpo_loss

    model = FluxKontextModel(tiny_flux_kontext_pipeline(seed=0), max_sequence_length=32)
    for m in model.pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.transformer.add_adapter(
            LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=KONTEXT_TARGETS)
        )
    before, h, w, steps = _params(model.pipe), 16, 16, 4
    src = _source(h, w, n=2)
    with torch.no_grad():
        cond = model.encode(PROMPTS, guidance_scale=2.5, images=src).repeat(2)  # 2 groups of 2
        x = model.initial_noise(4, h, w, _gen(0))
        ro = rollout(model, cond, x, model.sigmas(steps, h, w), "flow_sde", 0.7, generator=_gen(1))
        reward = model.decode(ro.final).mean((1, 2, 3)).view(2, 2)
    adv = ((reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-6)).flatten()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    for j in range(steps - 1):  # the SDE steps
        out = log_prob_at(model, cond, ro, j)
        assert (out.log_prob.detach() - ro.log_probs[:, j]).abs().max().item() <= 1e-6
        dt = float(ro.sigmas[j] - ro.sigmas[j + 1])
        flow_grpo_loss(out, None, ro.log_probs[:, j], adv, None, dt, clip_range=0.2).loss.backward()
    opt.step()
    changed = _changed(before, model.pipe)
    assert changed and all(".lora_" in n for n in changed) and any(".lora_B." in n for n in changed)

    export_lora(type(model.pipe), model.transformer, tmp_path / "lora")
    plain, loaded = _stock_with_lora("kontext", tmp_path / "lora", h, w, 3, 2.5, src=src)
    with torch.no_grad():
        cond = model.encode(PROMPTS, guidance_scale=2.5, images=src)
        x = model.initial_noise(2, h, w, _gen(3))
        ours = model.decode(rollout(model, cond, x, model.sigmas(3, h, w), "ode", None).final)
    assert (loaded - plain).abs().max().item() > 1e-6
    # measured 4.2e-7: this model's VAE weights are frozen (as build_model does), the fresh stock copy's are
    # not, and CPU convolution then takes another kernel: the source latents differ by 3.6e-7 (the LoRA
    # transformers agree bit for bit)
    assert (ours - loaded).abs().max().item() <= 1e-5


# --- 4. bad input ----------------------------------------------------------------------------------
BAD = [
    ("kontext", lambda m: m.encode(PROMPTS), r"flux_kontext needs a source image per prompt: pass images=\.\.\."),
    (
        "kontext",
        lambda m: m.encode(PROMPTS, images=_source(32, 32), height=32, width=48),
        r"source image is 32x32 .*height=32, width=48",
    ),
    (
        "kontext",
        lambda m: m.velocity(m.initial_noise(2, 32, 48), 0.5, m.encode(PROMPTS, images=_source(32, 32))),
        r"latents have 96 tokens but the source image is 32x32 \(64 tokens\)",
    ),
    ("kontext", lambda m: m.encode(PROMPTS, images=_source(30, 32)), r"height=30 is not a positive multiple of 4"),
    ("kontext", lambda m: m.encode(PROMPTS, images=_source(32, 32, n=3)), r"3 source images for 2 prompts"),
    ("kontext", lambda m: m.initial_noise(1, 32, 34), r"width=34 .*multiple of 4.*use width=32"),
    ("klein", lambda m: m.initial_noise(1, 30, 32), r"height=30 .*multiple of 4 \(FLUX.2: VAE .*use height=28"),
    ("klein", lambda m: m.sigmas(4, 32, 33), r"width=33 .*multiple of 4"),
    ("klein", lambda m: m.encode(PROMPTS, images=_source()), r"flux2 is a text-to-image family .*images="),
    ("klein", lambda m: m.encode(PROMPTS, guidance_scale=1.0, negative_prompts="blurry"), r"guidance_scale=1.0"),
    ("dev", lambda m: m.encode(PROMPTS, negative_prompts="blurry"), r"guidance embedding"),
    ("klein", lambda m: m.encode(PROMPTS, negative_prompts=["a", "b", "c"]), r"3 negative_prompts for 2"),
    (
        "klein",
        lambda m: m.velocity(m.initial_noise(2, 32, 32), 0.5, replace(m.encode(PROMPTS, 1.0), guidance_scale=5.0)),
        r"guidance_scale=5.0 > 1 needs negative embeddings",
    ),
    ("klein", lambda m: m.velocity(torch.zeros(3, 64, 8), 0.5, m.encode(PROMPTS)), r"batch 3 .*2 rows"),
    ("klein", lambda m: Flux2Model(tiny_flux_kontext_pipeline()), r"Flux2Model needs a Flux2KleinPipeline"),
    ("kontext", lambda m: FluxKontextModel(tiny_flux2_klein_pipeline()), r"FluxKontextModel needs a FluxKontext"),
    ("klein", lambda m: load_model("tiny-flux2", variant="pro"), r"variant='pro'"),
]


@pytest.mark.parametrize("kind,call,message", BAD)
def test_bad_input_is_one_clear_value_error(models, kind, call, message):
    with pytest.raises(ValueError, match=message):
        call(models[kind])


# --- registry, save / load -------------------------------------------------------------------------
def test_registry_detects_families_and_save_load_is_lossless(tmp_path, pipes, models):
    assert {"flux2", "flux_kontext"} <= set(FAMILIES) and {"tiny-flux2", "tiny-flux-kontext"} <= set(MODELS)
    assert detect_family("black-forest-labs/FLUX.2-klein-4B") == "flux2"
    assert detect_family("black-forest-labs/FLUX.1-Kontext-dev") == "flux_kontext"
    for kind, cls in (("klein", Flux2Model), ("dev", Flux2Model), ("kontext", FluxKontextModel)):
        fam = "flux_kontext" if kind == "kontext" else "flux2"
        pipes[kind].save_pretrained(str(tmp_path / kind))
        assert detect_family(pipes[kind]) == detect_family(str(tmp_path / kind)) == fam
        old, new = models[kind], load_model(str(tmp_path / kind), max_sequence_length=SEQ[kind])
        assert type(new) is cls and type(new.pipe) is type(pipes[kind])
        kw = {"images": _source(32, 32)} if kind == "kontext" else {}
        x = old.initial_noise(2, 32, 32, _gen(0))
        with torch.no_grad():
            assert torch.equal(*[m.velocity(x, 0.3, m.encode(PROMPTS, **kw)) for m in (old, new)])
    assert isinstance(load_model("tiny-flux-kontext"), FluxKontextModel)
    assert not load_model("tiny-flux2", variant="dev").true_cfg
