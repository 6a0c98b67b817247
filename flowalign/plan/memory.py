"""Peak memory per GPU by part, from a traced micro-batch (``count.Trace``), the batch arithmetic of
``train.batching.derived`` and a distribution strategy (what each rank holds):

* ``ddp``: every rank holds all weights, gradients and AdamW state;
* ``zero2`` (DeepSpeed ZeRO-2): gradients and optimizer state split over the N ranks, weights whole;
* ``fsdp`` (FULL_SHARD): weights, gradients and optimizer state split over N, plus the gathered
  weights of the two largest units in flight (the one computing and the prefetched one).

Parts (bytes): ``weights`` the transformer's frozen weights in ``model.dtype`` + trainable ones in fp32; ``gradients``
fp32 per trainable weight; ``optimizer`` AdamW's two fp32 moments per trainable weight, plus the fp32
EMA copy when ``train.ema`` (kept whole on every rank); ``activations`` the largest traced peak of one
pass: the training micro-batch (forward + backward; a sampling forward holds less, no grad), a text
encoding or a VAE decode of a sampling batch; ``rollouts`` what a rank keeps
from sampling to the update: for each of its images the latents of all T + 1 steps and T log-probs
(fp32) and the text conditioning (T5/CLIP states and pooled vector, conditional and, with CFG,
unconditional, in ``model.dtype``); ``text_encoders`` and ``vae`` their weights in ``model.dtype``, whole
on every rank (``encoders.py``). Not counted: reward models, the CUDA context and allocator
fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("ddp", "fsdp", "zero2")
FP32 = 4


PARTS = ("weights", "gradients", "optimizer", "activations", "rollouts", "text_encoders", "vae")


@dataclass
class Memory:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    rollouts: int
    text_encoders: int = 0
    vae: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, k) for k in PARTS)

    def gb(self) -> dict[str, float]:
        parts = {k: getattr(self, k) for k in PARTS}
        return {k: round(v / 1e9, 3) for k, v in {**parts, "total": self.total}.items()}


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}.")
    return strategy


def rollout_bytes(cfg, spec, images: int, latent_elements: int, text_tokens: int, cfg_pairs: bool) -> int:
    """Sampling results one rank keeps for the update (see the module doc)."""
    import torch

    from .build import _dtype

    t, c = cfg.sample.num_steps, spec.config
    text_dim = c.get("joint_attention_dim") or c.get("text_dim") or 0
    pooled = c.get("pooled_projection_dim", 0) if "Qwen" not in spec.class_name else 0
    embed_bytes = torch.tensor([], dtype=_dtype(cfg)).element_size()
    conditioning = (text_tokens * text_dim + pooled) * embed_bytes * (2 if cfg_pairs else 1)
    return images * ((t + 1) * latent_elements * FP32 + t * FP32 + conditioning)


def per_gpu(trace, cfg, strategy: str, gpus: int, rollouts: int, parts=()) -> Memory:
    """The parts of one rank's peak (module doc) for ``gpus`` ranks under ``strategy``; ``parts``
    (``encoders.PartCount``) add their weights, whole on every rank, and their pass's activation peak
    where it exceeds the training micro-batch's (the passes do not overlap)."""
    check_strategy(strategy)
    n = trace.trainable_params
    weights = trace.frozen_bytes + trace.trainable_bytes
    grads, adam = n * FP32, 2 * n * FP32
    ema = n * FP32 if cfg.train.ema else 0
    if strategy in ("fsdp", "zero2"):
        grads, adam = -(-grads // gpus), -(-adam // gpus)
    if strategy == "fsdp":
        weights = -(-weights // gpus) + 2 * trace.largest_block_bytes
    activations = max([trace.activation_bytes, *(p.activation_bytes for p in parts)])
    text = sum(p.weight_bytes for p in parts if p.role == "text_encoder")
    vae = sum(p.weight_bytes for p in parts if p.role == "vae")
    return Memory(weights, grads, adam + ema, activations, rollouts, text, vae)
