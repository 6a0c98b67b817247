"""The planner (``flowalign.plan``): parameter counts of the published configs against closed forms,
traced FLOPs of the testbed transformer against an analytic count, its traced activation memory
against the CPU allocator's peak on a real micro-batch, the shallow trace replayed to full depth
against full traces, the text encoders' and VAE's counts, and the command's refusals."""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flowalign.plan.build import Spec, _trainable, build, example_inputs, load_spec, published, transformer_class
from flowalign.plan.count import _autocast, count_params, flux_params, sd3_params, trace
from flowalign.plan.encoders import build_part, load_part
from flowalign.plan.shallow import extrapolate, reduce_config, shallow_layout
from flowalign.train import apply_overrides, get_preset


def test_published_configs_name_their_models_and_build_offline():
    specs = published()
    assert {
        "stabilityai/stable-diffusion-3.5-medium",
        "stabilityai/stable-diffusion-3.5-large",
        "black-forest-labs/FLUX.1-dev",
        "Qwen/Qwen-Image",
        "black-forest-labs/FLUX.2-dev",
        "black-forest-labs/FLUX.2-klein-base-4B",
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    } <= set(specs)
    for name in ("sd35_pickscore", "flux_hpsv2", "qwenimage_pickscore", "flux2_klein_pickscore", "wan_t2v_pickscore"):
        assert load_spec(get_preset(name)).hub_id == get_preset(name).model.path


@pytest.mark.e2e  # (about 5 s: a 2.2 B-parameter build on the meta device)
def test_sd35_medium_params_equal_the_closed_form():
    """2 243 171 520: the 2.24 B the issue measured, and ``sd3_params``'s sum over the config (module doc
    of ``count.sd3_params``: embedders, 24 joint blocks of which 13 with a second attention, output)."""
    spec = published()["stabilityai/stable-diffusion-3.5-medium"]
    assert count_params(spec) == sd3_params(spec.config) == 2_243_171_520


@pytest.mark.slow
def test_large_published_params_equal_the_closed_forms():
    sd35l, flux = published()["stabilityai/stable-diffusion-3.5-large"], published()["black-forest-labs/FLUX.1-dev"]
    assert count_params(sd35l) == sd3_params(sd35l.config) == 8_056_627_520
    assert count_params(flux) == flux_params(flux.config) == 11_901_408_320


def _deep_testbed(**changes) -> tuple:
    cfg = get_preset("testbed")
    spec = load_spec(cfg)
    return cfg, Spec("deep testbed", None, {**spec.config, **changes}, spec.vae_factor)


def test_shallow_layout_keeps_three_blocks_a_run():
    """An 8-block SD3 with dual attention in blocks 0-3: runs of 4 dual, 3 joint, 1 last (context
    pre-only) -> the shallow model keeps dual 0-2, joint 4-6 and the last: 7 blocks, dual in its 0-2;
    deep block 3 replays shallow block 2 (the third dual one)."""
    cfg, spec = _deep_testbed(num_layers=8, dual_attention_layers=[0, 1, 2, 3])
    layout = shallow_layout(build(spec))
    assert [i for _, i in layout.keep] == [0, 1, 2, 4, 5, 6, 7]
    assert layout.rep == [0, 1, 2, 2, 3, 4, 5, 6]
    small = reduce_config(spec, layout).config
    assert small["num_layers"] == 7 and small["dual_attention_layers"] == [0, 1, 2]


def test_extrapolate_replays_the_repeated_block():
    """Two kept blocks, the second standing for 3 deep ones (rep [0, 1, 1, 1]); segments (kind, FLOPs,
    net bytes, rise, freed by origin). Live bytes along the deep pass: forward 10, +5, +5, +5 -> 25;
    tail +1 -> 26; autocast's exit frees 2 bytes cast in block 1 per deep copy: -2 - 2 x 2 = -6 -> 20;
    turn (rise 4 -> peak 24, net 0); backward -5 x 3 (rise 3: 23, 18, 13), -10 (rise 1). Peak: the
    tail's 25 + its rise 3 = 28. FLOPs: forward 7 + 3 x 4 + 1 = 20; backward 2 + 3 x 8 + 9 = 35."""
    segments = [
        ("forward", 7, 10, 10, {}),
        ("forward", 4, 5, 6, {}),
        ("tail", 1, 1, 3, {}),
        ("cast", 0, -2, 0, {1: 2}),
        ("turn", 2, 0, 4, {}),
        ("backward", 8, -5, 3, {}),
        ("backward", 9, -10, 1, {}),
    ]
    assert extrapolate(segments, [0, 1, 1, 1]) == (20, 35, 28)
    assert extrapolate(segments[:-1], [0, 1, 1, 1]) is None  # a missing mark: the caller traces in full


def test_clip_l_text_encoder_params_equal_the_closed_form():
    """SD3.5's CLIP-L (CLIPTextModelWithProjection): token embedding 49408 x 768 = 37 945 344, positions
    77 x 768 = 59 136; per layer attention 4 (768^2 + 768) = 2 362 368, two LayerNorms 4 x 768 = 3 072,
    MLP 768 x 3072 + 3072 + 3072 x 768 + 768 = 4 722 432 -> 7 087 872 x 12 = 85 054 464; final LayerNorm
    1 536; projection 768 x 768 = 589 824 (no bias). Sum 123 650 304 (Flux's CLIPTextModel: less the
    projection, 123 060 480)."""
    part = load_part("sd35_clip_l")
    assert part["hub_id"] == "stabilityai/stable-diffusion-3.5-medium" and part["subfolder"] == "text_encoder"
    assert sum(p.numel() for p in build_part(part).parameters()) == 123_650_304
    flux = build_part(load_part("flux1_clip_l"))
    assert sum(p.numel() for p in flux.parameters()) == 123_650_304 - 589_824


@pytest.mark.e2e  # (about 15 s: T5-XXL, CLIP-G and the VAE built on the meta device)
def test_sd35_components_equal_their_published_sizes():
    """CLIP-G 694 659 840 (OpenCLIP bigG's text tower with projection), T5-XXL's encoder 4 762 310 656
    (the SD3 paper's 4.7 B), the 16-channel VAE 83 819 683 (encoder and decoder, no quant convs)."""
    sizes = {n: sum(p.numel() for p in build_part(load_part(n)).parameters()) for n in ("sd35_clip_g", "sd35_t5_xxl")}
    sizes["sd35_vae"] = sum(p.numel() for p in build_part(load_part("sd35_vae")).parameters())
    assert sizes == {"sd35_clip_g": 694_659_840, "sd35_t5_xxl": 4_762_310_656, "sd35_vae": 83_819_683}


@pytest.mark.e2e  # (about 40 s: shallow and full traces of a deep testbed and of a 6 + 5-block Flux)
@pytest.mark.parametrize(
    "preset, changes, extra",
    [
        ("testbed", {"num_layers": 8, "dual_attention_layers": [0, 1, 2, 3]}, []),
        ("testbed", {"num_layers": 8}, ["model.lora=false"]),
        ("flux_hpsv2", {"num_layers": 6, "num_single_layers": 5}, ["model.resolution=256", "sample.batch_size=1"]),
    ],
)
def test_shallow_trace_equals_the_full_trace(preset, changes, extra):
    """The shallow copy replayed to depth (``shallow.py``) gives the full trace's FLOPs and activation
    peak exactly (LoRA, full fine-tuning; Flux: bf16 autocast, two runs, the last block a run's)."""
    _shallow_equals_full(preset, changes, extra)


@pytest.mark.slow  # (about 10 s)
def test_shallow_trace_equals_the_full_trace_with_gradient_checkpointing():
    _shallow_equals_full("testbed", {"num_layers": 8}, ["model.gradient_checkpointing=true"])


def _shallow_equals_full(preset: str, changes: dict, extra: list) -> None:
    cfg = apply_overrides(get_preset(preset), extra)
    base = load_spec(cfg)
    spec = Spec("deep", base.hub_id, {**base.config, **changes}, base.vae_factor)
    rows = cfg.sample.batch_size * 2
    shallow, full = trace(spec, cfg, rows), trace(spec, cfg, rows, full=True)
    assert (shallow.forward_flops, shallow.backward_flops) == (full.forward_flops, full.backward_flops)
    assert shallow.activation_bytes == full.activation_bytes
    sizes = ("params", "trainable_params", "frozen_bytes", "trainable_bytes", "largest_block_bytes")
    assert [getattr(shallow, k) for k in sizes] == [getattr(full, k) for k in sizes]


@pytest.mark.slow  # (about 60 s: the full traces of SD3.5-M and FLUX.1-dev)
@pytest.mark.parametrize("preset", ["sd35_pickscore", "flux_hpsv2"])
def test_shallow_trace_equals_the_full_trace_of_the_paper_presets(preset):
    from flowalign.plan.build import true_cfg

    cfg = get_preset(preset)
    spec = load_spec(cfg)
    rows = cfg.sample.batch_size * (2 if true_cfg(spec, cfg) else 1)
    shallow, full = trace(spec, cfg, rows), trace(spec, cfg, rows, full=True)
    assert (shallow.forward_flops, shallow.backward_flops, shallow.activation_bytes) == (
        full.forward_flops,
        full.backward_flops,
        full.activation_bytes,
    )


# --- FLOPs of the testbed transformer vs the analytic count ---------------------------------------------
def sd3_forward_flops(c: dict, b: int, n: int, m: int, r: int = 0) -> tuple[int, int, int]:
    """(forward FLOPs, attention FLOPs, FLOPs of the layers whose input needs no gradient) of an
    SD3Transformer2DModel without dual attention on b rows of n image + m text tokens (s = n + m),
    hidden D, 2 FLOPs per multiply-add, LoRA rank r on the 8 attention projections.

    Embedders: patch conv 2 b n (C p^2) D, timestep MLP 2 b (256 D + D D), pooled MLP 2 b (P D + D D),
    caption projection 2 b m J D. A joint-attention block: AdaLN-Zero of both streams 2 x 2 b D 6D;
    q, k, v, out of both streams 4 x 2 b s D^2 = 8 b s D^2; attention Q K^T and A V 2 x 2 b s^2 D =
    4 b s^2 D; FF (D -> 4D -> D) of both streams 16 b s D^2; LoRA A (D -> r) and B (r -> D) on the 8
    projections 8 x 2 b (s/2 avg.) ... = 4 b D r (4 n + 4 m) = 16 b D r s. The last block: the context
    AdaLN is 2 b D 2D, the context stream has no out projection nor FF (6 b m D^2 for its q, k, v; LoRA
    4 b D r (4 n + 3 m)). Output: AdaLN 2 b D 2D, projection 2 b n D p^2 C."""
    d, s, p, cin = c["num_attention_heads"] * c["attention_head_dim"], n + m, c["patch_size"], c["in_channels"]
    no_grad_input = 2 * b * n * cin * p * p * d + 2 * b * 256 * d + 2 * b * c["pooled_projection_dim"] * d
    no_grad_input += 2 * b * m * c["joint_attention_dim"] * d
    embed = no_grad_input + 2 * b * d * d + 2 * b * d * d
    attention = 4 * b * s * s * d
    block = 2 * 2 * b * d * 6 * d + 8 * b * s * d * d + attention + 16 * b * s * d * d + 16 * b * d * r * s
    last = 2 * b * d * 6 * d + 2 * b * d * 2 * d + 8 * b * n * d * d + 6 * b * m * d * d + attention
    last += 16 * b * n * d * d + 4 * b * d * r * (4 * n + 3 * m)
    total = embed + (c["num_layers"] - 1) * block + last + 2 * b * d * 2 * d + 2 * b * n * d * p * p * cin
    return total, c["num_layers"] * attention, no_grad_input


@pytest.mark.e2e  # (a fake-tensor trace of the testbed: ~10-20 s; .ci/run runs e2e)
def test_testbed_flops_equal_the_analytic_count():
    """Testbed: D = 128, 4 blocks, 32 px through a 2x VAE and 2x2 patches -> n = 64 image tokens, m =
    77 CLIP + 16 T5 = 93 text tokens, 8 rows. Full fine-tuning: backward = 2 x every matmul (input and
    weight gradients) - the inputs that need no gradient + attention's backward 2.5 x its forward (5
    s^2 matmuls against 2); LoRA r16 (the preset) adds 16 b D r s per block to the forward."""
    full = apply_overrides(get_preset("testbed"), ["model.lora=false", "train.mixed_precision=no"])
    spec = load_spec(full)
    t = trace(spec, full, 8)
    f, a, x = sd3_forward_flops(spec.config, 8, 64, 93)
    assert t.forward_flops == f == 2_201_763_840
    assert t.backward_flops == 2 * (f - a) - x + 2.5 * a
    lora = trace(spec, get_preset("testbed"), 8)
    assert lora.forward_flops == sd3_forward_flops(spec.config, 8, 64, 93, r=16)[0]
    assert lora.params == t.params + lora.trainable_params and lora.trainable_params == 126_976


# --- memory: traced on fake tensors vs the CPU allocator on a real micro-batch -------------------------
class _MallInfo(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "k")
    ]


def _in_use() -> int:
    """glibc malloc's bytes in use (heap ``uordblks`` + mmapped ``hblkhd``): torch's CPU allocator."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


class _AllocatorPeak(TorchDispatchMode):
    """The allocator's bytes in use, read after every op; ``peak`` their maximum."""

    def __init__(self):
        super().__init__()
        self.peak = _in_use()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, _in_use())
        return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads glibc's mallinfo2")
@pytest.mark.parametrize(
    "extra",  # (about 3 s each: the default suite's budget is spent; two more cases run with -m slow)
    [
        pytest.param(["model.gradient_checkpointing=true"], marks=pytest.mark.e2e),
        pytest.param([], marks=pytest.mark.slow),
        pytest.param(["model.lora=false"], marks=pytest.mark.slow),
    ],
)
def test_testbed_activation_memory_matches_the_cpu_allocator(extra):
    """The same micro-batch (testbed preset, 16 prompts x CFG = 32 rows) on real CPU tensors, one
    thread, gradients allocated beforehand: glibc's in-use bytes above the start, peak over the ops,
    against the trace's peak of live storages; measured 0.99 / 0.98 / 1.00 of it (gradient
    checkpointing / LoRA / full fine-tuning)."""
    cfg = apply_overrides(get_preset("testbed"), extra)
    spec = load_spec(cfg)
    estimate = trace(spec, cfg, 32).activation_bytes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = transformer_class(spec).from_config(spec.config).requires_grad_(False)
        _trainable(model, spec, cfg)
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        inputs = example_inputs(spec, cfg, 32)
        gc.collect()
        start, meter = _in_use(), _AllocatorPeak()
        with meter:
            with _autocast(cfg):
                out = model.train()(**inputs, return_dict=False)[0]
            out.float().square().mean().backward()
            del out
    finally:
        torch.set_num_threads(threads)
    measured = meter.peak - start
    assert abs(estimate - measured) <= 0.15 * measured, (estimate, measured)


# --- the command ------------------------------------------------------------------------------------
def _plan(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "flowalign.cli", "plan", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.e2e  # (a fake-tensor trace of the testbed: ~10-20 s; .ci/run runs e2e)
def test_plan_testbed_json_adds_up():
    from flowalign.plan import plan

    p = plan(get_preset("testbed"), gpus=1, strategy="fsdp", gpu="4090", mfu=0.5)
    mem = p["memory_gb_per_gpu"]
    assert p["params"] == 2_288_400 and p["trainable_params"] == 126_976  # sd3_params of the testbed config
    assert p["params_text_encoders"] == p["params_vae"] == 0  # (the testbed lists no published parts)
    parts = sum(v for k, v in mem.items() if k != "total")
    assert abs(parts - mem["total"]) < 0.005 and p["peak_memory_gb_per_gpu"] == mem["total"] and p["fits"]
    # 32 images = 2 batches of 16 (x2 CFG) -> 2 x 8 sampling forwards + 2 batches x 2 trained steps x
    # (forward + reference forward (beta 0.04) + backward)
    f, b = p["flops_per_micro_batch"]["forward"], p["flops_per_micro_batch"]["backward"]
    assert p["flops_per_iteration"] == p["flops_per_iteration_per_gpu"]["total"] == 16 * f + 4 * (2 * f + b)
    assert p["est_seconds_per_iteration"] == round((16 * f + 4 * (2 * f + b)) / (165e12 * 0.5), 2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["sd35_pickscore", "--strategy", "zero3"], "strategy 'zero3' is unknown; choose one of ddp, fsdp, zero2"),
        (["sd35_pickscore", "--gpus", "5000"], "5000 GPUs are more than the 1152 images per iteration"),
        (["sd35_pickscore", "--gpus", "7"], "1152 images per iteration do not split over 7 processes"),
        (["flux_kontext_clip"], "model.path='black-forest-labs/FLUX.1-Kontext-dev' (preset 'flux_kontext_clip') has"),
        (["sd35_pickscore", "--gpu", "v100"], "gpu 'v100' is unknown"),
    ],
)
def test_bad_input_is_one_error_before_anything_is_built(args, message, capsys, monkeypatch):
    from flowalign.cli import main
    from flowalign.plan import count

    monkeypatch.setattr(count, "trace", lambda *a, **k: pytest.fail("built a model before refusing"))
    assert main(["plan", *args]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith("flowalign plan: error: ") and message in lines[0], err


@pytest.mark.slow
@pytest.mark.parametrize("preset, params", [("sd35_pickscore", 2_243_171_520), ("flux_hpsv2", 11_901_408_320)])
def test_plan_paper_presets_on_8_gpus(preset, params):
    out = _plan(preset, "--gpus", "8", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    p = json.loads(out.stdout)
    assert p["params"] == params and 0 < p["trainable_params"] < params
    assert p["peak_memory_gb_per_gpu"] > p["memory_gb_per_gpu"]["weights"] > 0
    assert p["flops_per_iteration"] > 0 and p["est_seconds_per_iteration"] > 0
    per_gpu = p["flops_per_iteration_per_gpu"]
    assert per_gpu["total"] == sum(v for k, v in per_gpu.items() if k != "total") and per_gpu["vae_decoding"] > 0
    mem = p["memory_gb_per_gpu"]
    assert (
        mem["text_encoders"] > 0 and mem["vae"] > 0 and mem["activations"] == max(p["activation_gb_by_pass"].values())
    )
    # CLIP-L 123 650 304 + CLIP-G 694 659 840 + T5-XXL 4 762 310 656 (SD3.5); Flux: CLIP-L 123 060 480 + T5-XXL
    assert p["params_text_encoders"] == {"sd35_pickscore": 5_580_620_800, "flux_hpsv2": 4_885_371_136}[preset]
    assert p["params_vae"] == 83_819_683
