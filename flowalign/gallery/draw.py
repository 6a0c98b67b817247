"""Drawing one gallery cell: ``generate`` (the base sampler, an editing model's sampler with its source
image, or a steering method) and ``score`` (every reward of the saved pixels). ``run.py`` drives them."""

from __future__ import annotations

from typing import Any

from ..steering.config import method_kwargs
from .config import GallerySettings
from .specs import MethodSpec


def generate(
    model: Any,
    spec: MethodSpec,
    prompt: str,
    seed: int,
    reward: Any,
    steps: int,
    cfg: float | None,
    size: int,
    source: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """One image [3, H, W] (a video model: a clip [F, 3, H, W]) in [0, 1] for (prompt, seed) and its
    row fields (nfe, ...). ``source`` [3, H, W]: the source image of an editing model."""
    import torch

    from ..steering.common import WithSources, encode_prompts

    gen = torch.Generator().manual_seed(seed)
    steps, cfg = spec.options.get("steps", steps), spec.options.get("cfg", cfg)
    neg = spec.options.get("negative_prompt")
    nfe0, extra = model.nfe, {}
    images = None if source is None else source[None]
    if spec.steering:
        from ..steering import steer

        kwargs = method_kwargs(spec.method, steps)  # DTS without a budget: what FK would spend
        if neg is not None:
            kwargs["negative_prompts"] = [neg]
        if images is not None:
            kwargs["cond"] = encode_prompts(model, [prompt], cfg, kwargs.pop("negative_prompts", None), images)
            reward = WithSources(reward, [prompt], images)
        res = steer(
            spec.kind,
            model,
            [prompt],
            reward,
            num_steps=steps,
            cfg=cfg,
            height=size,
            width=size,
            generator=gen,
            **kwargs,
        )
        with torch.no_grad():
            image = model.decode(res.latents, size, size)[0]
        extra = {"reward_calls": int(res.reward_calls), "steer_reward": float(res.rewards[0])}
    elif images is not None:
        image = sample_edit(model, prompt, images, gen, steps, cfg, size, neg)
    else:
        image = model.sample(
            [prompt], num_steps=steps, guidance_scale=cfg, height=size, width=size, generator=gen, negative_prompts=neg
        ).images[0]
    return image, {"nfe": int(model.nfe - nfe0), **extra}


def sample_edit(model: Any, prompt: str, images: Any, gen: Any, steps: int, cfg: Any, size: int, neg: Any) -> Any:
    """``model.sample`` of an editing model: the prompt encoded with its source image, ODE rollout, decode."""
    import torch

    from ..sampling.rollout import rollout
    from ..steering.common import encode_prompts

    x = model.initial_noise(1, size, size, gen)
    cond = encode_prompts(model, [prompt], cfg, None if neg is None else [neg], images)
    with torch.no_grad():
        ro = rollout(model, cond, x, model.sigmas(steps or model.default_steps, size, size), step="ode")
        return model.decode(ro.final, size, size)[0]


def score(scorers: dict[str, Any], settings: GallerySettings, i: int, pixels: Any, source: Any = None) -> dict:
    """Every reward of the saved pixels [3, H, W] (a clip: [F, 3, H, W], image rewards lifted to its
    frames) of prompt i, with its .jsonl metadata columns (and ``source_images`` when it has a source)."""
    import torch

    from ..train.build import lift_to_video

    columns = {k: [v] for k, v in settings.metadata[i].items()}
    if source is not None:
        columns["source_images"] = source[None]
    video = pixels.ndim == 4
    with torch.no_grad():
        return {
            n: float(
                (lift_to_video(scorers[n]) if video else scorers[n])(pixels[None], [settings.prompts[i]], **columns)[0]
            )
            for n in settings.rewards
        }
