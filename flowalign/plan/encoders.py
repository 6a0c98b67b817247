"""The text encoders and the VAE of a preset's pipeline: their published configs (``configs/parts/*.json``,
each naming its hub id, subfolder and class; a transformer config lists its pipeline's parts under
``components``), built on the meta device for their parameters, and traced on fake tensors (``count.Meter``,
no grad) for the FLOPs and the activation peak of one text encoding of a sampling batch (its prompts,
and the negative ones with classifier-free guidance) and one VAE decode of a sampling batch's latents.

Tokens per encoder: CLIP its 77 positions; T5 / UMT5 ``model.max_sequence_length``; Qwen2.5-VL the
prompt plus Qwen-Image's 34-token chat template in front (dropped from the states after encoding).
Weights in ``model.dtype`` (the pipeline loads every component so; all frozen). Departures: the
Qwen2.5-VL encoder runs its language model only (text prompts; the vision tower's weights are counted
but it never runs); Flux.2's Mistral / Qwen3 encoders and the testbed's are not kept (no parts listed:
zero), nor are reward models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .build import CONFIGS_DIR, _dtype, to_fake

PARTS_DIR = CONFIGS_DIR / "parts"
CLIP_TOKENS, QWEN_TEMPLATE_TOKENS = 77, 34


@dataclass
class PartCount:
    name: str
    role: str  # text_encoder | vae
    params: int
    weight_bytes: int
    flops: int  # one call on the sampling batch (text: its prompts with CFG's negatives; VAE: its latents)
    activation_bytes: int  # peak live storage of that call


def load_part(name: str) -> dict:
    path = PARTS_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"component config {name!r} is not in {PARTS_DIR}; add its published config.json there.")
    return json.loads(path.read_text())


def build_part(data: dict, dtype=None):
    """The component on the meta device, in ``dtype``."""
    import torch

    with torch.device("meta"):
        if data["library"] == "transformers":
            import transformers

            config = transformers.AutoConfig.for_model(**data["config"])
            model = getattr(transformers, data["class"])(config)
        else:
            import diffusers

            model = getattr(diffusers, data["class"]).from_config(data["config"])
    for t in [*model.parameters(), *model.buffers()]:  # (ModelMixin.to warns about fp32 modules)
        if dtype is not None and t.is_floating_point():
            t.data = t.data.to(dtype)
    return model


def tokens(rule: str, cfg) -> int:
    """Positions an encoder sees under a component's ``tokens`` rule (module doc)."""
    n = cfg.model.max_sequence_length
    rules = {"clip": CLIP_TOKENS, "text": n, "qwen_template": n + QWEN_TEMPLATE_TOKENS}
    if rule not in rules:
        raise ValueError(f"component tokens rule {rule!r} is unknown; use one of {', '.join(rules)} or 'vae'.")
    return rules[rule]


def count_parts(spec, cfg, rows: int) -> list[PartCount]:
    """Every listed part of ``spec``'s pipeline: text encoders on ``rows`` prompts, the VAE on
    ``cfg.sample.batch_size`` latents."""
    out = []
    for entry in getattr(spec, "components", None) or []:
        data = load_part(entry["part"])
        model = build_part(data, _dtype(cfg)).eval().requires_grad_(False)
        params = sum(p.numel() for p in model.parameters())
        weight = sum(p.numel() * p.element_size() for p in model.parameters())
        if entry["tokens"] == "vae":
            flops, peak = _trace(model, _vae_call(model, spec, cfg, cfg.sample.batch_size))
            out.append(PartCount(entry["part"], "vae", params, weight, flops, peak))
        else:
            flops, peak = _trace(model, _text_call(data, rows, tokens(entry["tokens"], cfg)))
            out.append(PartCount(entry["part"], "text_encoder", params, weight, flops, peak))
    return out


def _text_call(data: dict, rows: int, n: int):
    import torch

    def call(model):
        ids = torch.ones(rows, n, dtype=torch.long)
        if data["class"].startswith("CLIP"):
            return model(input_ids=ids, output_hidden_states=True)
        if data["class"].startswith("Qwen"):  # the language model only (module doc)
            return model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        return model(input_ids=ids)

    return call


def _vae_call(model, spec, cfg, rows: int):
    import torch

    r = cfg.model.resolution // spec.vae_factor
    channels = model.config.get("latent_channels") or model.config["z_dim"]

    def call(model):
        if "latent_channels" in model.config:
            z = torch.randn(rows, channels, r, r, dtype=model.dtype)
        else:  # (Wan / Qwen-Image: video latents, 4x fewer frames; one for an image)
            frames = (cfg.model.num_frames - 1) // 4 + 1 if "Wan" in spec.class_name else 1
            z = torch.randn(rows, channels, frames, r, r, dtype=model.dtype)
        return model.decode(z, return_dict=False)

    return call


def _trace(model, call) -> tuple[int, int]:
    """(FLOPs, activation peak) of ``call(model)`` without grad on fake tensors."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .count import Meter, register_cpu_attention

    register_cpu_attention()
    with FakeTensorMode(), torch.no_grad():
        to_fake(model)
        meter = Meter()
        with meter:
            out = call(model)
            del out
    return meter.flops, meter.peak
