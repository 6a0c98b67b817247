"""Memory / FLOPs planner: will a preset fit a GPU, and how long will an iteration take?

``plan(cfg, gpus, strategy, gpu, mfu)`` builds the preset's transformer from its published config
(``build.py``: ``configs/*.json``, each naming its hub id) on fake tensors, traces one training
micro-batch (``count.py``: the sampling batch x 2 with classifier-free guidance, LoRA or full
fine-tuning, gradient checkpointing and autocast per the preset) and adds up, per GPU:

* FLOPs per iteration: sampling ``batches_per_rank x num_steps`` forwards, training ``batches_per_rank
  x inner_epochs x trained_steps`` forward + backward units (+ one reference forward each when the KL
  weight ``beta`` > 0), text encoding and VAE decoding;
* peak memory by part (``memory.py``) for ``ddp`` | ``fsdp`` | ``zero2``;
* seconds per iteration = FLOPs / (the GPU's dense bf16 peak x ``mfu``).

The transformer's FLOPs and activation peak come from a shallow copy traced and replayed to full
depth (``shallow.py``, exact; ``count.trace(..., full=True)`` traces the deep model); its parameters
from the deep model built on the meta device. The pipeline's text encoders and VAE (``encoders.py``:
their published configs) add their weights, their pass's activation peak where larger, and per
iteration ``batches_per_rank`` text encodings (prompts and CFG negatives) and VAE decodes.

Departures: reward models are not counted; one trace at the micro-batch stands for every step (FLOPs
do not depend on sigma); the CPU autocast policy stands for the GPU's.
"""

from __future__ import annotations

from typing import Any

from .memory import STRATEGIES, check_strategy

# dense bf16 tensor-core peak (TFLOP/s, no sparsity; vendor datasheets) and memory (GB) per GPU
GPUS: dict[str, tuple[float, float]] = {
    "h100": (989.0, 80.0),  # H100 SXM
    "a100-80": (312.0, 80.0),
    "a100-40": (312.0, 40.0),
    "l40s": (362.0, 48.0),
    "4090": (165.0, 24.0),  # fp32 accumulate
}

__all__ = ["GPUS", "STRATEGIES", "check_plan", "plan"]


def check_plan(cfg, gpus: int, strategy: str, gpu: str, mfu: float, spec=None):
    """Everything that needs no model: the strategy, the GPU, the MFU, the batch split over ``gpus``
    ranks (``train.batching.derived``) and the offline config (unless ``spec`` is given); returns
    (Derived, Spec)."""
    from ..train.batching import derived
    from .build import load_spec

    check_strategy(strategy)
    if gpu not in GPUS:
        raise ValueError(f"gpu {gpu!r} is unknown; choose one of {', '.join(GPUS)}.")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu} must be in (0, 1]: the fraction of the GPU's peak FLOP/s reached, e.g. 0.4.")
    total = cfg.sample.groups_per_iteration * cfg.sample.group_size
    if gpus > total:
        raise ValueError(
            f"{gpus} GPUs are more than the {total} images per iteration ({cfg.sample.groups_per_iteration} groups x "
            f"{cfg.sample.group_size}) can be split over; use at most {total} GPUs, or raise "
            f"sample.groups_per_iteration."
        )
    d = derived(cfg, gpus)
    return d, spec if spec is not None else load_spec(cfg)


def plan(cfg, gpus: int = 8, strategy: str = "ddp", gpu: str = "h100", mfu: float = 0.4, spec=None) -> dict[str, Any]:
    """The plan of ``cfg`` on ``gpus`` GPUs as a JSON-ready dict (see the module doc); ``spec`` (a
    ``build.Spec``) replaces the config of ``cfg.model.path``."""
    from .build import example_inputs, text_tokens, true_cfg
    from .count import trace
    from .encoders import count_parts
    from .memory import per_gpu, rollout_bytes

    d, spec = check_plan(cfg, gpus, strategy, gpu, mfu, spec)
    pairs = true_cfg(spec, cfg)
    rows = cfg.sample.batch_size * (2 if pairs else 1)
    tr = trace(spec, cfg, rows)
    parts = count_parts(spec, cfg, rows)
    latent = _latent_elements(spec, cfg, example_inputs)
    buffers = rollout_bytes(cfg, spec, d.images_per_rank, latent, text_tokens(spec, cfg), pairs)
    mem = per_gpu(tr, cfg, strategy, gpus, buffers, parts)
    ref = 1 if getattr(cfg.objective.options, "beta", 0) > 0 else 0
    sampling = d.batches_per_rank * cfg.sample.num_steps * tr.forward_flops
    units = d.batches_per_rank * cfg.train.inner_epochs * d.trained_steps
    training = units * ((1 + ref) * tr.forward_flops + tr.backward_flops)
    by_role = {r: [p for p in parts if p.role == r] for r in ("text_encoder", "vae")}
    text = d.batches_per_rank * sum(p.flops for p in by_role["text_encoder"])
    vae = d.batches_per_rank * sum(p.flops for p in by_role["vae"])
    flops = sampling + training + text + vae
    peak, capacity = GPUS[gpu]
    return {
        "preset": cfg.preset,
        "model": spec.hub_id or spec.name,
        "class": spec.class_name,
        "gpus": gpus,
        "strategy": strategy,
        "gpu": gpu,
        "mfu": mfu,
        "params": tr.params - (tr.trainable_params if cfg.model.lora else 0),
        "trainable_params": tr.trainable_params,
        "params_text_encoders": sum(p.params for p in by_role["text_encoder"]),
        "params_vae": sum(p.params for p in by_role["vae"]),
        "components": {p.name: p.params for p in parts},
        "micro_batch_rows": rows,
        "peak_memory_gb_per_gpu": mem.gb()["total"],
        "memory_gb_per_gpu": mem.gb(),
        "activation_gb_by_pass": {
            "training": round(tr.activation_bytes / 1e9, 3),
            "text_encoding": round(max([0, *(p.activation_bytes for p in by_role["text_encoder"])]) / 1e9, 3),
            "vae_decoding": round(max([0, *(p.activation_bytes for p in by_role["vae"])]) / 1e9, 3),
        },
        "fits": mem.total <= capacity * 1e9,
        "flops_per_iteration": flops * gpus,
        "flops_per_iteration_per_gpu": {
            "sampling": sampling,
            "training": training,
            "text_encoding": text,
            "vae_decoding": vae,
            "total": flops,
        },
        "flops_per_micro_batch": {"forward": tr.forward_flops, "backward": tr.backward_flops},
        "est_seconds_per_iteration": round(flops / (peak * 1e12 * mfu), 2),
        "images_per_iteration": d.images_per_iteration,
        "trace_seconds": round(tr.seconds, 2),
    }


def _latent_elements(spec, cfg, example_inputs) -> int:
    """Elements of one sample's latents (the transformer's ``hidden_states`` row)."""
    import torch

    with torch.device("meta"):
        return example_inputs(spec, cfg, 1)["hidden_states"].numel()
