"""The steered ``__call__`` shared by ``pipelines/pipeline_flowalign_{sd3,flux}.py``.

With ``steering=None`` the pipelines call the parent's ``__call__`` untouched (bit-identical output).
Otherwise the parent's arguments are bound against the parent's signature (same names, same
defaults), the pipeline is wrapped in the flowalign adapter (``SD3Model`` / ``FluxModel``) and the
chosen method runs on the one rollout loop; the chosen latents are decoded and post-processed
exactly as the parent does. ``callback_on_step_end(pipe, i, t, {"latents": ...})`` is called after
every step of the main particle rollout (FK, best-of-N, beam), before the steering logic of that
step; returned ``latents`` replace the state in place. DTS grows a tree of partial rollouts, so it
takes no callback (one clear error).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ..models.base import check_prompts
from . import beam_search, best_of_n, fk_steer, tree_search
from .common import SteerResult

METHODS = ("fk", "bon", "beam", "dts", "dts_star")
# parent arguments the steered path understands; any other one must keep its default
SUPPORTED = {
    "self",
    "prompt",
    "height",
    "width",
    "num_inference_steps",
    "guidance_scale",
    "negative_prompt",
    "num_images_per_prompt",
    "generator",
    "output_type",
    "return_dict",
    "callback_on_step_end",
    "callback_on_step_end_tensor_inputs",
    "max_sequence_length",
}
DEFAULT_STOCHASTIC = ("flow_sde", 0.7)


def _check_parent_args(parent_call: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    sig = inspect.signature(parent_call)
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    a = dict(bound.arguments)
    for name, value in a.items():
        if name in SUPPORTED:
            continue
        default = sig.parameters[name].default
        same = value is default or (not torch.is_tensor(value) and value == default)
        if not same:
            raise ValueError(
                f"`{name}` is not supported together with steering (it would be ignored); "
                f"leave it at its default {default!r}, or call with steering=None."
            )
    return a


def _callback(pipe: Any, fn: Callable | None, inputs: list[str], cond: Any) -> Callable | None:
    if fn is None:
        return None
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if isinstance(fn, (PipelineCallback, MultiPipelineCallbacks)):
        inputs = fn.tensor_inputs
    bad = [k for k in inputs if k not in ("latents", "prompt_embeds", "pooled_prompt_embeds")]
    if bad:
        raise ValueError(
            f"callback_on_step_end_tensor_inputs {bad} are not available with steering; use "
            f"'latents' (and read-only 'prompt_embeds' / 'pooled_prompt_embeds')."
        )
    alias = {"latents": None, "prompt_embeds": "prompt_embeds", "pooled_prompt_embeds": "pooled"}

    def run(ctx) -> None:
        tensors = {k: ctx.out.x_next if alias[k] is None else ctx.cond.embeds[alias[k]] for k in inputs}
        out = fn(pipe, ctx.j, ctx.sigma * 1000, tensors) or {}
        latents = out.pop("latents", None)
        if latents is not None and latents is not ctx.out.x_next:
            ctx.out.x_next.copy_(latents)  # the rollout holds this very tensor as its state

    return run


def steered_call(
    pipe: Any,
    family: str,
    parent_call: Callable,
    args: tuple,
    kwargs: dict,
    *,
    steering: str,
    reward: Any,
    num_particles: int,
    lam: float,
    potential: str,
    resample_steps: Any,
    step: str | None,
    noise_level: Any,
    nfe_budget: int | None,
    steering_kwargs: dict | None,
):
    """Run ``steering`` with the parent's arguments; returns (images or latents, SteerResult, the bound
    parent arguments). The parent's ``guidance_scale`` is the classifier-free guidance; FK's gradient
    proposal is ``steering_kwargs={"reward_grad_scale": ...}``."""
    if steering not in METHODS:
        raise ValueError(f"unknown steering={steering!r}; choose one of {list(METHODS)} or None (stock sampler).")
    if reward is None:
        raise ValueError(
            f"steering={steering!r} needs reward= (a name such as 'compositional', a flowalign "
            f"Reward or a callable (images, prompts) -> [B])."
        )
    a = _check_parent_args(parent_call, args, kwargs)
    model, cond, height, width = _model_and_cond(pipe, family, a)
    t = a["num_inference_steps"]
    sigmas = model.sigmas(t, height, width)
    pipe._num_timesteps = t
    cb = _callback(pipe, a["callback_on_step_end"], list(a["callback_on_step_end_tensor_inputs"]), cond)
    extra = dict(steering_kwargs or {})
    kind, level = _sampler(steering, step, noise_level)
    common = dict(
        sigmas=sigmas, step=kind, noise_level=level, height=height, width=width, generator=a["generator"], cond=cond
    )
    choices = dict(num_particles=num_particles, lam=lam, potential=potential, resample_steps=resample_steps)
    res = _run(steering, model, reward, cb, t, nfe_budget, common, extra, **choices)
    return _decode(pipe, family, res.latents, height, width, a["output_type"]), res, a


def _model_and_cond(pipe: Any, family: str, a: dict[str, Any]) -> tuple[Any, Any, int, int]:
    """The flowalign adapter of ``pipe``, the prompts' conditioning (each repeated
    ``num_images_per_prompt`` times), height and width; sets the pipeline's guidance state."""
    from ..models import FluxModel, SD3Model

    prompts = check_prompts(a["prompt"], "prompt")
    npp = a["num_images_per_prompt"] or 1
    rows = [p for p in prompts for _ in range(npp)]
    height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    w = float(a["guidance_scale"])
    if family == "sd3":
        model = SD3Model(pipe, max_sequence_length=a["max_sequence_length"])
        negs = a["negative_prompt"]
        if negs is not None and not isinstance(negs, str):
            negs = [n for n in check_prompts(negs, "negative_prompt") for _ in range(npp)]
        cond = model.encode(rows, w, negs) if w > 1 else model.encode(rows, w)
    else:
        model = FluxModel(pipe, max_sequence_length=a["max_sequence_length"])
        cond = model.encode(rows, w, height=height, width=width)
    pipe._guidance_scale, pipe._interrupt, pipe._joint_attention_kwargs = w, False, None
    return model, cond, height, width


def _sampler(steering: str, step: str | None, noise_level: Any) -> tuple[str, Any]:
    """(step, noise level): best-of-N defaults to the ODE, the other methods to ``DEFAULT_STOCHASTIC``."""
    if steering == "bon":
        return step or "ode", noise_level
    return step or DEFAULT_STOCHASTIC[0], DEFAULT_STOCHASTIC[1] if noise_level is None else noise_level


def _run(
    steering: str,
    model: Any,
    reward: Any,
    cb: Callable | None,
    t: int,
    nfe_budget: int | None,
    common: dict[str, Any],
    extra: dict[str, Any],
    *,
    num_particles: int,
    lam: float,
    potential: str,
    resample_steps: Any,
) -> SteerResult:
    """Call the steering method with the pipeline's choices (``common``) and ``steering_kwargs``."""
    if steering == "fk":
        kw = dict(num_particles=num_particles, lam=lam, potential=potential, resample_steps=resample_steps)
        return fk_steer(model, None, reward, nfe_budget=nfe_budget, callback=cb, **kw, **common, **extra)
    if steering == "bon":
        return best_of_n(model, None, reward, n=num_particles, nfe_budget=nfe_budget, callback=cb, **common, **extra)
    if steering == "beam":
        bw = extra.pop("beam_width", 2 if num_particles >= 2 else 1)
        return beam_search(
            model,
            None,
            reward,
            beam_width=bw,
            num_children=max(1, num_particles // bw),
            nfe_budget=nfe_budget,
            select_steps=resample_steps,
            lam=extra.pop("select_lam", None),
            callback=cb,
            **common,
            **extra,
        )
    if cb is not None:
        raise ValueError(
            "callback_on_step_end is not supported with DTS (it grows a tree of partial "
            "rollouts, not one batch of latents per step); drop it or use steering='fk'."
        )
    budget = nfe_budget if nfe_budget is not None else num_particles * t
    star = steering == "dts_star"
    return tree_search(
        model, None, reward, nfe_budget=budget, star=star, lam=lam, branch_steps=resample_steps, **common, **extra
    )


@torch.no_grad()
def _decode(pipe: Any, family: str, latents: torch.Tensor, height: int, width: int, output_type: str):
    """As the parent's tail: (unpack), unscale, VAE decode, post-process."""
    if output_type == "latent":
        return latents
    if family == "flux":
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    latents = latents.to(pipe.vae.dtype)
    latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    image = pipe.vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type=output_type)


def steering_info(res: SteerResult) -> dict[str, Any]:
    """What the pipeline output carries as ``.steering``: method, NFE, reward calls and the chosen
    images' rewards (plain numbers), plus the full ``SteerResult`` under ``"result"``."""
    return {
        "method": res.method,
        "nfe": int(res.nfe),
        "reward_calls": int(res.reward_calls),
        "rewards": [float(r) for r in res.rewards],
        "result": res,
    }
