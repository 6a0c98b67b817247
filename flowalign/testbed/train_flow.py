"""Flow-matching training of the testbed's SD3 transformer and CLIP text encoders.

Follows SD3 (Esser et al. 2024, "Scaling Rectified Flow Transformers"): rectified-flow target
``v = eps - x0`` on VAE latents scaled as the pipeline unscales them
(``z = (latent - shift_factor) * scaling_factor``), logit-normal timestep density (m=0, s=1)
shifted by the scheduler's ``shift``, classifier-free-guidance dropout to the empty prompt.
Departures: the two CLIP encoders are trained from scratch jointly with the transformer (no
pretrained text model exists here), and so is the zero-layer T5 (its embedding table); the T5 pad
positions are folded into one key with a log(#pads) logit bias (``pipeline.RepeatedTokenProcessor``,
exact); an EMA of the weights is what is saved. Optional caption noise gives the base model a known
failure for RL and steering to repair: ``caption_noise`` = p of two-object captions drawn without their
second object (object neglect), ``relation_noise`` = p of position captions drawn with the relation
mirrored (a relation prior p(correct) = 1 - p, as web captions confuse left and right), ``leak_noise`` =
p of two-object captions drawn with the second object in the first one's shape (attribute leakage, the
binding failure of real text-to-image models; colour clauses still hold), ``duplicate_noise`` = p of
two-object captions drawn with their second object twice (an extra object: only its count clause fails).
Calls chain: a call continues from the modules it is given (e.g. the EMA weights a previous call
returned), with a fresh optimizer and schedule (a warm restart).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import pipeline as P
from . import render as R
from . import world as W
from .train import Log, _schedule

_MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _hit(applies: bool, rng: np.random.Generator, p: float) -> bool:
    """True with probability ``p`` where a noise applies; draws no random number for p = 0 or where it
    does not apply (so clean cycles, and recipes without a noise kind, stay bit-identical)."""
    return p > 0 and applies and bool(rng.random() < p)


def neglected(labels: W.PromptLabels, rng: np.random.Generator, p: float) -> W.PromptLabels:
    """With probability ``p`` a two-object caption's scene lacks its second object."""
    if not _hit(len(labels.groups) == 2, rng, p):
        return labels
    g = labels.groups[0]
    return W.PromptLabels("count" if g.count > 1 else "single", (g,))


def mirrored(labels: W.PromptLabels, rng: np.random.Generator, p: float) -> W.PromptLabels:
    """With probability ``p`` a position caption's scene has the opposite relation."""
    if not _hit(labels.relation is not None, rng, p):
        return labels
    return W.PromptLabels(labels.kind, labels.groups, _MIRROR[labels.relation])


def leaked(labels: W.PromptLabels, rng: np.random.Generator, p: float) -> W.PromptLabels:
    """With probability ``p`` a two-object caption's scene draws its second object in the first one's
    shape (colours, counts and the relation kept)."""
    if not _hit(len(labels.groups) == 2, rng, p):
        return labels
    a, b = labels.groups
    return W.PromptLabels(labels.kind, (a, W.Group(b.color, a.shape, b.count)), labels.relation)


def duplicated(labels: W.PromptLabels, rng: np.random.Generator, p: float) -> W.PromptLabels:
    """With probability ``p`` a two-object caption's scene holds its second object twice (with a
    relation, both copies stand on the relation's side of the first)."""
    if not _hit(len(labels.groups) == 2, rng, p):
        return labels
    a, b = labels.groups
    return W.PromptLabels(labels.kind, (a, W.Group(b.color, b.shape, b.count + 1)), labels.relation)


NOISES = {
    "caption_noise": neglected,
    "relation_noise": mirrored,
    "leak_noise": leaked,
    "duplicate_noise": duplicated,
}  # applied in this order (a recipe without the later kinds draws as before)


def logit_normal_sigmas(b: int, g: torch.Generator, shift: float) -> torch.Tensor:
    s = torch.sigmoid(torch.randn(b, generator=g))
    return shift * s / (1 + (shift - 1) * s)


def train_flow(
    cfg: dict[str, Any],
    components: dict[str, Any],
    seed: int,
    log: Log,
    checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``transformer`` + ``text_encoder(_2)`` in ``components`` in place; returns EMA copies."""
    unknown = sorted(k for k in cfg if k.endswith("_noise") and k not in NOISES)
    if unknown:
        raise ValueError(f"flow cycle has unknown caption noise {unknown}; use one of {list(NOISES)}")
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    run = _FlowRun(cfg, components, rng, g)
    t0, running = time.time(), 0.0
    for step in range(cfg["steps"]):
        loss = run.step(step)
        if checkpoint is not None and step > 0:
            checkpoint(step, run.ema)
        running = loss if step == 0 else 0.98 * running + 0.02 * loss
        if step % 100 == 0 or step == cfg["steps"] - 1:
            el = time.time() - t0
            log(
                f"flow {step:5d} loss {running:.4f} lr {run.sched.get_last_lr()[0]:.2e} "
                f"{el / (step + 1):.2f} s/step, eta {el / (step + 1) * (cfg['steps'] - step - 1) / 60:.1f} min"
            )
    return run.finish()


class _FlowRun:
    """One ``train_flow`` call: the trained modules, their EMA copies, the optimizer and schedule, and
    the per-step batch (caption noises drawn from ``rng``, every tensor draw from ``g``)."""

    def __init__(self, cfg: dict[str, Any], components: dict[str, Any], rng: np.random.Generator, g: torch.Generator):
        self.cfg, self.rng, self.g = cfg, rng, g
        self.tok, self.tok3, self.vae = components["tokenizer"], components["tokenizer_3"], components["vae"].eval()
        self.modules = {k: components[k].train().requires_grad_(True) for k in ("transformer", *P.ENCODERS)}
        self.ema = {k: copy.deepcopy(m).eval().requires_grad_(False) for k, m in self.modules.items()}
        self.params = [p for m in self.modules.values() for p in m.parameters()]
        self.ema_params = [p for m in self.ema.values() for p in m.parameters()]
        self.opt = torch.optim.AdamW(
            self.params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0), betas=(0.9, 0.99), foreach=True
        )
        self.sched = _schedule(self.opt, cfg["steps"], warmup=cfg.get("warmup", 200))
        self.proc = P.use_repeated_token(self.modules["transformer"])
        self.shift, self.sf, self.sh = float(cfg["shift"]), self.vae.config.scaling_factor, self.vae.config.shift_factor
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.noises = [(fn, float(cfg.get(key, 0.0))) for key, fn in NOISES.items()]

    def ids_of(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.cache
        for p in prompts:
            if p not in cache:
                cache[p] = (P.tokenize(self.tok, [p])[0], P.tokenize(self.tok3, [p], P.T5_TRAIN_LEN + 1)[0])
        return torch.stack([cache[p][0] for p in prompts]), torch.stack([cache[p][1] for p in prompts])

    def scene(self, prompt: str) -> W.Scene:
        labels = W.parse_prompt(prompt)
        for fn, p in self.noises:
            labels = fn(labels, self.rng, p)
        return W.scene_for(labels, self.rng)

    def batch(self, b: int) -> tuple[torch.Tensor, list[str]]:
        """Scaled latents [b, 4, h, w] of rendered scenes and their captions (CFG-dropped to '')."""
        prompts = [W.sample_prompt(self.rng, "train", tuple(self.cfg["kind_weights"])) for _ in range(b)]
        x = R.render([self.scene(p) for p in prompts])
        with torch.no_grad():
            z = (self.vae.encode(x * 2 - 1).latent_dist.sample(generator=self.g) - self.sh) * self.sf
        drop = torch.rand(b, generator=self.g) < self.cfg["cfg_dropout"]
        return z, ["" if d else p for p, d in zip(prompts, drop.tolist())]

    def step(self, step: int) -> float:
        """One optimizer step and EMA update; returns the flow-matching loss."""
        b, g = self.cfg["batch"], self.g
        z, prompts = self.batch(b)
        context, pooled = P.encode_train(self.modules, *self.ids_of(prompts))
        self.proc.log_n = torch.log(P.sample_n_pad(b, g))
        sigma = logit_normal_sigmas(b, g, self.shift)
        eps = torch.randn(z.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * z + s * eps
        v = self.modules["transformer"](
            hidden_states=xt, encoder_hidden_states=context, pooled_projections=pooled, timestep=sigma * 1000
        ).sample
        loss = F.mse_loss(v, eps - z)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        decay = min(self.cfg["ema"], (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1 - decay)
        return loss.item()

    def finish(self) -> dict[str, Any]:
        """Back to the stock attention processor, eval mode; returns the EMA modules."""
        from diffusers.models.attention_processor import JointAttnProcessor2_0

        for m in (self.modules["transformer"], self.ema["transformer"]):
            m.set_attn_processor(JointAttnProcessor2_0())
        for m in self.modules.values():
            m.eval()
        return self.ema
