"""A preset's transformer built from its published ``transformer/config.json`` without its memory: the
config (kept as data in ``configs/*.json``, each naming its hub id and source), the diffusers class
built under ``FakeTensorMode`` (parameters are shapes, not storage), LoRA adapters added by peft as
the trainer adds them (``train/build.py``), and one batch of example inputs shaped as the family's
adapter in ``flowalign/models`` feeds its transformer.

Where the config comes from (``load_spec``): ``model.path='testbed'`` reads the shipped pipeline's
``transformer/config.json``; a local pipeline directory its own; a hub id the JSON in ``configs/``
whose ``hub_id`` matches. Anything else is one ValueError naming the hub id and the two ways out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIGS_DIR = Path(__file__).parent / "configs"
# text tokens in front of the T5 ones: SD3 concatenates CLIP-L/G (77 tokens) with T5 along the sequence
SD3_CLIP_TOKENS = 77


@dataclass
class Spec:
    """A transformer config and where it came from."""

    name: str  # configs/<name>.json, 'testbed', or the local directory
    hub_id: str | None  # the published model (None: a local pipeline)
    config: dict  # the published transformer/config.json
    vae_factor: int = 8  # pixels per latent cell (the families' VAEs: 8; the testbed's trained VAE: 2)
    components: list | None = None  # the pipeline's text encoders and VAE (``encoders.py``)

    @property
    def class_name(self) -> str:
        return self.config["_class_name"]


def published() -> dict[str, Spec]:
    """hub id -> Spec of every config kept in ``configs/``."""
    out = {}
    for path in sorted(CONFIGS_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        out[data["hub_id"]] = Spec(path.stem, data["hub_id"], data["config"], components=data.get("components"))
    return out


def load_spec(cfg) -> Spec:
    """The transformer config of ``cfg.model.path`` as far as it can be had offline (see module doc)."""
    path = cfg.model.path
    if path == "testbed":
        from ..testbed.paths import pipeline_dir

        return _local(Path(pipeline_dir()), "testbed")
    local = Path(os.path.expanduser(path))
    if (local / "transformer" / "config.json").is_file():
        return _local(local, str(local))
    known = published()
    if path in known:
        return known[path]
    raise ValueError(
        f"model.path={path!r} (preset {cfg.preset!r}) has no transformer config that can be read offline: "
        f"flowalign/plan/configs holds {sorted(known)}; add its published transformer/config.json there as "
        f'{{"hub_id": "{path}", "config": {{...}}}}, or pass model.path=<a local pipeline directory>.'
    )


def _local(directory: Path, name: str) -> Spec:
    config = json.loads((directory / "transformer" / "config.json").read_text())
    vae = directory / "vae" / "config.json"
    factor = 2 ** (len(json.loads(vae.read_text())["block_out_channels"]) - 1) if vae.is_file() else 8
    return Spec(name, None, config, factor)


def transformer_class(spec: Spec) -> type:
    import diffusers

    cls = getattr(diffusers, spec.class_name, None)
    if cls is None:
        raise ValueError(f"{spec.name}: diffusers {diffusers.__version__} has no class {spec.class_name!r}.")
    return cls


def build(spec: Spec, cfg=None) -> Any:
    """The transformer of ``spec`` with the trainable parameters of ``cfg`` (LoRA adapters on
    ``model.lora_targets`` or everything; None: all frozen), frozen weights in ``model.dtype``,
    trainable ones in fp32 and gradient checkpointing per the preset, on the meta device (peft cannot
    move fake parameters, so ``to_fake`` turns it into fake tensors afterwards)."""
    import logging

    import torch

    cls = transformer_class(spec)
    logging.getLogger("diffusers.configuration_utils").setLevel(logging.ERROR)  # published extras (Qwen's)
    with torch.device("meta"):
        model = cls.from_config(spec.config).requires_grad_(False)
        if cfg is not None:
            _trainable(model, spec, cfg)
    return model


def _trainable(model: Any, spec: Spec, cfg) -> None:
    dtype = _dtype(cfg)
    for t in [*model.parameters(), *model.buffers()]:  # (ModelMixin.to warns about fp32 modules)
        if t.is_floating_point():
            t.data = t.data.to(dtype)
    if cfg.model.lora:
        from peft import LoraConfig

        model.add_adapter(
            LoraConfig(
                r=cfg.model.lora_rank,
                lora_alpha=cfg.model.lora_alpha,
                init_lora_weights=cfg.model.lora_init,
                target_modules=lora_targets(cfg, spec),
            )
        )
    else:
        model.requires_grad_(True)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if cfg.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()


def to_fake(model: Any) -> Any:
    """Call under ``FakeTensorMode``: every meta parameter, buffer and tensor attribute becomes a fake
    CPU tensor of its shape, dtype (and ``requires_grad``)."""
    import torch

    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                fake = torch.empty(p.shape, dtype=p.dtype, device="cpu")
                module._parameters[name] = torch.nn.Parameter(fake, requires_grad=p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device="cpu")
        for name, t in list(vars(module).items()):  # plain tensor attributes (Qwen-Image's RoPE tables)
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                setattr(module, name, torch.empty(t.shape, dtype=t.dtype, device="cpu"))
    return model


FAMILY_OF_CLASS = {
    "SD3Transformer2DModel": "sd3",
    "FluxTransformer2DModel": "flux",
    "Flux2Transformer2DModel": "flux2",
    "QwenImageTransformer2DModel": "qwenimage",
    "WanTransformer3DModel": "wan",
}


def lora_targets(cfg, spec: Spec) -> list[str]:
    """``model.lora_targets``; left at the SD3 default, the family's own list (as ``train.build``)."""
    from ..train.config import SD3_LORA_TARGETS
    from ..train.families import family_lora_targets

    own = family_lora_targets(FAMILY_OF_CLASS.get(spec.class_name))
    return own if own is not None and list(cfg.model.lora_targets) == SD3_LORA_TARGETS else list(cfg.model.lora_targets)


def text_tokens(spec: Spec, cfg) -> int:
    """Text positions the transformer sees: SD3's 77 CLIP + T5 ``max_sequence_length``; the others
    ``max_sequence_length`` (an upper bound for Qwen-Image, which trims padding per prompt)."""
    extra = SD3_CLIP_TOKENS if spec.class_name == "SD3Transformer2DModel" else 0
    return extra + cfg.model.max_sequence_length


def true_cfg(spec: Spec, cfg) -> bool:
    """Classifier-free guidance runs the transformer twice (as a doubled batch); guidance-distilled
    models (``guidance_embeds``) take the scale as an input instead."""
    return cfg.sample.guidance_scale > 1 and not spec.config.get(
        "guidance_embeds", spec.class_name == "Flux2Transformer2DModel"
    )


def example_inputs(spec: Spec, cfg, batch: int) -> dict:
    """Keyword inputs of one transformer call on ``batch`` rows at ``model.resolution`` (and
    ``model.num_frames``), shaped as the family's adapter feeds them (``flowalign/models``); make them
    under the same ``FakeTensorMode`` as the model."""
    import torch

    c, r, dtype = spec.config, cfg.model.resolution // spec.vae_factor, _dtype(cfg)
    text, name = text_tokens(spec, cfg), spec.class_name
    t = torch.full([batch], 0.5)
    if name == "SD3Transformer2DModel":
        return dict(
            hidden_states=torch.randn(batch, c["in_channels"], r, r, dtype=dtype),
            encoder_hidden_states=torch.randn(batch, text, c["joint_attention_dim"], dtype=dtype),
            pooled_projections=torch.randn(batch, c["pooled_projection_dim"], dtype=dtype),
            timestep=t * 1000,
        )
    if name == "WanTransformer3DModel":
        frames = (cfg.model.num_frames - 1) // 4 + 1
        return dict(
            hidden_states=torch.randn(batch, c["in_channels"], frames, r, r, dtype=dtype),
            encoder_hidden_states=torch.randn(batch, text, c["text_dim"], dtype=dtype),
            timestep=t * 1000,
        )
    n, joint = (r // 2) ** 2, c["joint_attention_dim"]  # packed 2x2 latent cells per token
    kw = dict(
        hidden_states=torch.randn(batch, n, c["in_channels"], dtype=dtype),
        encoder_hidden_states=torch.randn(batch, text, joint, dtype=dtype),
        timestep=t,
    )
    if name == "QwenImageTransformer2DModel":
        kw.update(encoder_hidden_states_mask=torch.ones(batch, text), img_shapes=[[(1, r // 2, r // 2)]] * batch)
        return kw
    axes = len(c.get("axes_dims_rope", [16, 56, 56]))
    kw.update(txt_ids=torch.zeros(text, axes), img_ids=torch.zeros(n, axes))
    if c.get("guidance_embeds", name == "Flux2Transformer2DModel"):
        kw["guidance"] = torch.full([batch], float(cfg.sample.guidance_scale))
    if name == "FluxTransformer2DModel":
        kw["pooled_projections"] = torch.randn(batch, c["pooled_projection_dim"], dtype=dtype)
    return kw


def _dtype(cfg):
    """The dtype the transformer's inputs arrive in: the frozen weights' (``model.dtype``)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.model.dtype]
