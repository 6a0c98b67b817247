"""Training-free reward-guided editing by trajectory optimal control.

Paper: Chang, Kim, Ye, "Training-Free Reward-Guided Image Editing via Trajectory Optimal Control",
arXiv 2509.25845 (ITOC). The source image is encoded (x_src), brought to flow time ``sigma`` and the
reverse ODE from there is a controlled trajectory

    x_{j+1} = x_j + (sigma_{j+1} - sigma_j) v(x_j, sigma_j | prompt) + u_j,   j = 0 .. n-1 (sigma_n = 0),

whose additive controls u_j (zero at the start) are optimised for

    J(u) = reward_weight r(decode(x_0)) - closeness ||x_0 - x_src||^2 - control_cost sum_j ||u_j||^2,

squared norms *averaged over latent elements* (the closeness measure: mean squared distance to the
source in latent space). ``state="noise"``: x_sigma = (1 - sigma) x_src + sigma eps (forward noising, as
the paper's Markovian initial trajectory); ``state="invert"``: Euler ODE inversion of x_src from 0 up
to sigma on the same grid (the paper's deterministic option). Iteration 0 (u = 0) is plain SDEdit /
inversion reconstruction; the returned edit of each image is the iterate with the highest J.

Departures: the adjoint states are computed by autograd through the sampler (the discrete adjoint of
the Euler scheme, rather than the paper's adjoint ODE with vector-Jacobian products), the controls are
updated by Adam ascent with step ``lr`` instead of the paper's fixed-point update, and an explicit closeness
term joins the paper's control-energy regulariser. NFE counts forward velocity evaluations (each
backward pass costs about two more). The reward must be differentiable (``Reward.differentiable``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..ranges import ranged
from ..sampling.sde import ode
from .common import LatentReward, SteerResult, encode_prompts

STATES = ("noise", "invert")

__all__ = ["STATES", "EditOptions", "check_edit_options", "check_sources", "edit_control", "edit_pipeline"]


@dataclass
class EditOptions:
    sigma: float = ranged(0.6, "(0, 1]")  # flow time the source is brought to (1 = pure noise)
    state: str = "noise"  # noise (forward noising) | invert (ODE inversion)
    iterations: int = ranged(15, "[1, inf)")  # control updates (iteration 0 = SDEdit)
    lr: float = ranged(0.02, "(0, inf)")  # Adam step on the controls
    reward_weight: float = ranged(1.0, "(0, inf)")
    closeness: float = ranged(1.0, "[0, inf)")  # weight of mean((x_0 - x_src)^2)
    control_cost: float = ranged(0.0, "[0, inf)")  # weight of sum_j mean(u_j^2)


def check_edit_options(options: EditOptions, prefix: str = "") -> EditOptions:
    from ..ranges import check_ranges

    check_ranges(options, prefix)
    if options.state not in STATES:
        raise ValueError(f"{prefix}state={options.state!r} is unknown; choose one of {list(STATES)}.")
    return options


def check_sources(sources: Any, height: int, width: int, prompts: int) -> Tensor:
    """Source images [B, 3, H, W] in [0, 1] at the model's size, one per prompt; one error each."""
    if sources is None:
        raise ValueError("no source image: editing needs the image to edit; pass sources=[B, 3, H, W] (CLI: --source).")
    x = torch.as_tensor(sources).float()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"source images have shape {tuple(x.shape)}; expected [B, 3, H, W] in [0, 1].")
    if tuple(x.shape[-2:]) != (height, width):
        raise ValueError(
            f"the source image is {x.shape[-1]}x{x.shape[-2]} (WxH) but this model samples {width}x{height}; "
            f"resize it to {width}x{height} or pass size={x.shape[-1]} if the model supports it."
        )
    if x.shape[0] != prompts:
        raise ValueError(f"{x.shape[0]} source images for {prompts} prompts; pass one image per prompt.")
    return x


@torch.no_grad()
def encode_images(model: Any, images: Tensor) -> Tensor:
    """Images [B, 3, H, W] in [0, 1] -> latents (the inverse of ``model.decode``: VAE mean, shifted and
    scaled as the adapters' decode expects); models without a VAE (analytic flows) decode with the
    identity, so their latents are the inputs."""
    vae = getattr(model, "vae", None)
    if vae is None:
        return images.float()
    z = vae.encode((2 * images - 1).to(vae.device, vae.dtype)).latent_dist.mean.float()
    return (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def edit_grid(sigmas: Tensor, sigma: float) -> Tensor:
    """The part of the model's grid below ``sigma``, starting at ``sigma``: [sigma, s_i < sigma ..., 0]."""
    s = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
    return torch.cat([torch.tensor([float(sigma)]), s[s < float(sigma) - 1e-6]])


def start_state(model: Any, cond: Any, x_src: Tensor, grid: Tensor, state: str, generator: Any) -> Tensor:
    """x at grid[0]: forward noising with a fresh eps, or Euler ODE inversion from 0 up the grid."""
    s0 = grid[0]
    if state == "noise":
        eps = torch.randn(x_src.shape, generator=generator, dtype=torch.float32).to(x_src.device)
        return (1 - s0) * x_src + s0 * eps
    x, up = x_src, grid.flip(0)
    with torch.no_grad():
        for a, b in zip(up[:-1], up[1:]):
            x = ode(x, model.velocity(x, a, cond), a, b).x_next  # Euler with increasing sigma
    return x


def controlled(model: Any, cond: Any, x: Tensor, grid: Tensor, controls: list[Tensor]) -> Tensor:
    """The controlled Euler trajectory from grid[0] to 0 -> x_0 (differentiable in the controls)."""
    for (a, b), u in zip(zip(grid[:-1], grid[1:]), controls):
        x = ode(x, model.velocity(x, a, cond), a, b).x_next + u
    return x


def edit_control(
    model: Any,
    prompts: Any,
    reward: Any,
    sources: Any = None,
    *,
    source_latents: Tensor | None = None,
    options: EditOptions | None = None,
    num_steps: int | None = None,
    sigmas: Any = None,
    cfg: float | None = None,
    height: int | None = None,
    width: int | None = None,
    generator: Any = None,
    cond: Any = None,
) -> SteerResult:
    """Edit one source per prompt toward the reward (see the module doc): ``sources`` images [B, 3, H, W]
    in [0, 1], or ``source_latents`` already encoded. Returns the edits' latents, rewards and NFE;
    ``info``: per-iteration mean reward / closeness / objective (``history``), the SDEdit start
    (``initial``), the source latents and the grid."""
    o = check_edit_options(options or EditOptions())
    rew = LatentReward(reward, model)
    if rew.differentiable is False:
        raise ValueError(
            f"edit_control optimises the trajectory by the reward's gradient, but {rew.name!r} has "
            f"differentiable=False; choose a differentiable reward (e.g. compositional with output='soft')."
        )
    height = height or int(getattr(model, "default_size", 0) or 0)
    width = width or height
    prompts = list(prompts)
    if source_latents is None:
        source_latents = encode_images(model, check_sources(sources, height, width, len(prompts)))
    cond = cond if cond is not None else encode_prompts(model, prompts, cfg)
    full = model.sigmas(num_steps or model.default_steps, height, width) if sigmas is None else sigmas
    grid = edit_grid(full, o.sigma)
    nfe0 = model.nfe
    x_src = source_latents.float()
    x_start = start_state(model, cond, x_src, grid, o.state, generator)
    return _optimise(model, cond, prompts, rew, x_src, x_start, grid, o, nfe0)


def _optimise(model, cond, prompts, rew, x_src, x_start, grid, o: EditOptions, nfe0: int) -> SteerResult:
    """Adam ascent on the controls (written out: beta 0.9 / 0.999, eps 1e-8); keep each row's best iterate by J."""
    controls = [torch.zeros_like(x_src) for _ in range(grid.numel() - 1)]
    m1, m2 = [torch.zeros_like(x_src) for _ in controls], [torch.zeros_like(x_src) for _ in controls]
    dims = tuple(range(1, x_src.ndim))
    best_j = torch.full((x_src.shape[0],), -float("inf"))
    best_x, best_r, history = x_src.clone(), torch.zeros(x_src.shape[0]), []
    for it in range(o.iterations + 1):
        with torch.enable_grad():
            us = [u.requires_grad_(True) for u in controls]
            x0 = controlled(model, cond, x_start, grid, us)
            r = rew(x0, prompts, grad=True)
            close = ((x0 - x_src) ** 2).mean(dims)
            energy = sum(((u**2).mean(dims) for u in us), torch.zeros_like(close))
            j = o.reward_weight * r - o.closeness * close - o.control_cost * energy
            grads = torch.autograd.grad(j.sum(), us) if it < o.iterations else None
        jd, rd = j.detach().cpu(), r.detach().cpu()
        better = jd > best_j
        best_j, best_r = torch.where(better, jd, best_j), torch.where(better, rd, best_r)
        best_x[better] = x0.detach()[better.to(x0.device)]
        history.append(
            {"reward": float(rd.mean()), "closeness": float(close.detach().mean()), "objective": float(jd.mean())}
        )
        if grads is None:
            break
        with torch.no_grad():
            for i, g in enumerate(grads):
                m1[i] = 0.9 * m1[i] + 0.1 * g
                m2[i] = 0.999 * m2[i] + 0.001 * g * g
                step = o.lr * (m1[i] / (1 - 0.9 ** (it + 1))) / ((m2[i] / (1 - 0.999 ** (it + 1))).sqrt() + 1e-8)
                controls[i] = controls[i].detach() + step
    info = {"history": history, "initial": history[0], "source_latents": x_src, "grid": grid, "options": o}
    return SteerResult(
        latents=best_x, rewards=best_r, nfe=model.nfe - nfe0, method="edit_control", reward_calls=rew.calls, info=info
    )


def edit_pipeline(pipe: Any, image: Any, prompt: Any, reward: Any, **kwargs: Any) -> tuple[list, SteerResult]:
    """The diffusers-style entry: a ``StableDiffusion3Pipeline`` (or a FlowAlign one), PIL image(s) or
    [B, 3, H, W] tensors in [0, 1], prompt(s) and a reward -> (edited PIL images, the result).
    ``kwargs``: ``edit_control``'s (``options=EditOptions(...)``, ``num_steps``, ``cfg``, ``generator``)."""
    import numpy as np

    from ..models import SD3Model
    from ..models.base import check_prompts

    prompts = check_prompts(prompt, "prompt")
    images = image if isinstance(image, (list, tuple)) else [image]
    if images and not torch.is_tensor(images[0]):
        images = [
            torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1) for im in images
        ]
    sources = torch.stack(list(images)) if isinstance(images, (list, tuple)) else images
    if sources.ndim == 5:
        sources = sources[:, 0] if sources.shape[1] == 1 else sources.flatten(0, 1)
    model = SD3Model(pipe)
    res = edit_control(model, prompts, reward, sources, **kwargs)
    with torch.no_grad():
        out = model.decode(res.latents).clamp(0, 1)
    return pipe.image_processor.postprocess(out * 2 - 1, output_type="pil"), res
