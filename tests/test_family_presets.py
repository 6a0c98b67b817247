"""Presets of the newer families (Qwen-Image, Qwen-Image-Edit, FLUX.2, Kontext, Wan), the offline hub
error, the attention switch and the model-family benchmark.

What must hold: each preset passes the start-up checks (ranges, windows, batch arithmetic on 1 and 8
processes); offline, building its model is ONE ValueError naming the hub id and ``model.path=...``
within seconds and before any loader runs (also when the hub is merely unreachable); its LoRA
targets exist in the family's transformer and every adapter gets a gradient (no dead adapters:
DDP would stall on them); ``model.attention=xformers`` without CUDA / the package is one ValueError
naming the setting and the reason; ``benchmarks/bench_models.py`` validates its flags first and
reports 0-diff parity.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from flowalign.models import FAMILIES, check_attention, load_model, set_attention
from flowalign.train.batching import derived
from flowalign.train.build import build_model
from flowalign.train.checks import validate
from flowalign.train.run import resolve_config

NEW = {  # preset -> (hub id, family, tiny stand-in, overrides that size it down for a CPU)
    "qwenimage_pickscore": ("Qwen/Qwen-Image", "qwenimage", "tiny-qwenimage", 32),
    "qwenimage_edit_clip": ("Qwen/Qwen-Image-Edit", "qwenimage_edit", "tiny-qwenimage-edit", 32),
    "flux_kontext_clip": ("black-forest-labs/FLUX.1-Kontext-dev", "flux_kontext", "tiny-flux-kontext", 32),
    "flux2_klein_pickscore": ("black-forest-labs/FLUX.2-klein-base-4B", "flux2", "tiny-flux2", 32),
    "wan_t2v_pickscore": ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan", "tiny-wan", 16),
}
SIZE = {"qwenimage_edit": 64, "flux2": 16}  # px of the liveness check (default 32)
BENCHES = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("name", sorted(NEW))
def test_preset_passes_start_up_checks(name):
    cfg, _ = resolve_config(name, [], None)
    hub, family, _, _ = NEW[name]
    assert (cfg.model.path, cfg.model.family, cfg.preset) == (hub, family, name)
    validate(cfg)  # ranges, window, credit, objective, rewards, batch arithmetic (1 process), paths
    for world in (1, 8):  # the peers' recipes ran on 8-32 GPUs
        assert derived(cfg, world).grad_accum >= 1
    assert cfg.model.dtype == cfg.train.mixed_precision == "bf16" and cfg.model.lora


@pytest.mark.parametrize("name", sorted(NEW))
def test_offline_build_is_one_error_naming_the_hub_id(name, monkeypatch):
    hub, family, _, _ = NEW[name]
    cls = FAMILIES[family]

    def must_not_load(*a, **k):
        raise AssertionError("the loader ran before the offline check")

    monkeypatch.setattr(cls, "from_pretrained", classmethod(must_not_load))
    cfg, _ = resolve_config(name, [], None)
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        build_model(cfg)
    assert time.perf_counter() - start < 5.0
    msg = str(err.value)
    assert f"model '{hub}' is a hub id" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "model.path=/path/to/saved/pipeline" in msg and f"hf download {hub}" in msg


def test_unreachable_hub_is_the_same_error(monkeypatch):
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ValueError, match=r"'Qwen/Qwen-Image' is a hub id.*cannot be reached.*model.path="):
        load_model("Qwen/Qwen-Image")


def test_a_saved_pipeline_directory_is_the_fix(tmp_path):
    from flowalign.models.qwenimage import QwenImageModel

    load_model("tiny-qwenimage").pipe.save_pretrained(str(tmp_path / "qi"))
    over = [f"model.path={tmp_path / 'qi'}", "model.dtype=fp32", "model.max_sequence_length=32"]
    cfg, _ = resolve_config("qwenimage_pickscore", over, None)
    model, _, _ = build_model(cfg)
    assert isinstance(model, QwenImageModel)
    assert any(".lora_" in n for n, p in model.transformer.named_parameters() if p.requires_grad)


def _source(family: str, size: int):
    if family == "qwenimage_edit":
        return {"images": torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))}
    if family == "flux_kontext":
        return {"images": torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))}
    return {}


@pytest.mark.parametrize("name", sorted(NEW))
def test_preset_lora_targets_exist_and_every_adapter_gets_a_gradient(name):
    _, family, tiny, seq = NEW[name]
    over = [f"model.path={tiny}", f"model.max_sequence_length={seq}", "model.dtype=fp32"]
    cfg, _ = resolve_config(name, over, None)
    model, _, _ = build_model(cfg)  # check_lora_targets: every target names a module of the transformer
    size = SIZE.get(family, 32)
    cond = model.encode(["a red circle"], cfg.sample.guidance_scale, **_source(family, size))
    x = model.initial_noise(1, size, size, torch.Generator().manual_seed(0))
    model.velocity(x, 0.6, cond).square().mean().backward()
    lora = {n: p for n, p in model.transformer.named_parameters() if p.requires_grad}
    assert lora and all(".lora_" in n for n in lora)
    assert not [n for n, p in lora.items() if p.grad is None]  # every adapter takes part in the loss


# --- model.attention -----------------------------------------------------------------------------------
def _fake_env(monkeypatch, cuda: bool, package: bool):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: (object() if package else None) if n == "xformers" else real(n, *a)
    )


@pytest.mark.parametrize(
    "cuda,package,why",
    [
        (False, False, r"no CUDA device .* and the xformers package is not installed \(pip install xformers\)"),
        (False, True, r"cannot run: no CUDA device \(torch.cuda.is_available\(\) is False\); use model.attention=sdpa"),
        (True, False, r"cannot run: the xformers package is not installed \(pip install xformers\)"),
    ],
)
def test_xformers_without_cuda_or_package_is_one_error(monkeypatch, cuda, package, why):
    _fake_env(monkeypatch, cuda, package)
    with pytest.raises(ValueError, match=r"^model.attention=xformers cannot run: ") as err:
        set_attention(load_model("tiny-sd3"), "xformers")
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(ValueError, match=why):
        check_attention("xformers")


def test_xformers_on_this_machine_names_the_setting():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    with pytest.raises(ValueError, match=r"model.attention=xformers cannot run: no CUDA device"):
        set_attention(load_model("tiny-sd3"), "xformers")


def test_xformers_enables_diffusers_attention_when_available(monkeypatch):
    _fake_env(monkeypatch, cuda=True, package=True)
    model, calls = load_model("tiny-flux2"), []
    monkeypatch.setattr(model.transformer, "enable_xformers_memory_efficient_attention", lambda: calls.append(1))
    set_attention(model, "xformers", device="cuda")
    assert calls == [1]
    with pytest.raises(ValueError, match=r"the model runs on cpu \(xformers kernels are CUDA-only\)"):
        set_attention(model, "xformers", device="cpu")


def test_sdpa_is_a_no_op_and_unknown_kinds_are_refused():
    model = load_model("tiny-wan")
    before = {k: type(v) for k, v in model.transformer.attn_processors.items()}
    set_attention(model, "sdpa")
    assert {k: type(v) for k, v in model.transformer.attn_processors.items()} == before
    with pytest.raises(ValueError, match=r"model.attention='flash' is unknown; choose one of \('sdpa', 'xformers'\)"):
        check_attention("flash")


# --- benchmarks/bench_models.py ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv,named",
    [(["--families", "nope"], "--families"), (["--families", "wan,wan"], "repeated"), (["--steps", "1"], "--steps")],
)
def test_bench_models_bad_flags_are_one_argparse_error(argv, named, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHES))
    import bench_models

    with pytest.raises(SystemExit) as exc:
        bench_models.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and ": error: " in err[-1] and named in err[-1]


def test_bench_models_reports_parity(monkeypatch, capsys):
    import json

    monkeypatch.syspath_prepend(str(BENCHES))
    import bench_models

    bench_models.main(["--quick", "--families", "flux_kontext,wan", "--repeats", "1"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for fam in ("flux_kontext", "wan"):
        assert result[f"{fam}_ode_vs_diffusers_max_abs_diff"] <= 1e-5
        assert result[f"{fam}_logprob_recompute_max_abs_diff"] <= 1e-6
        assert result[f"{fam}_time_ratio"] > 0
