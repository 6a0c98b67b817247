"""FlowAlignSD3Pipeline: diffusers' StableDiffusion3Pipeline with inference-time steering.

Load it like any community pipeline (diffusers needs ``trust_remote_code=True`` for a local file)::

    pipe = DiffusionPipeline.from_pretrained(model_dir, custom_pipeline="pipelines/pipeline_flowalign_sd3.py",
                                             trust_remote_code=True)
    out = pipe("two red circles", steering="fk", num_particles=4, lam=10.0, reward="compositional")
    out.images, out.steering["rewards"], out.steering["nfe"]

Only ``__call__`` is overridden. With ``steering=None`` (the default) it is the parent's call,
unchanged. Otherwise every parent argument keeps its name and default; the steering ones are:
``steering`` ("fk" | "bon" | "beam" | "dts" | "dts_star"), ``reward`` (a flowalign reward name, a
``Reward`` or a callable (images in [0, 1], prompts) -> [B]), ``num_particles`` (FK particles /
best-of-N samples / beams x children / DTS rollouts when no budget), ``lam`` (inverse temperature),
``potential`` (FK: "max" | "diff" | "sum" | "rt"), ``resample_steps`` (FK resampling, beam selection
or DTS branching steps, 0-based), ``step`` / ``noise_level`` (the stochastic sampler, default
flow_sde 0.7; best-of-N defaults to the ODE), ``nfe_budget`` (model evaluations per image) and
``steering_kwargs`` (any other keyword of the method in ``flowalign.steering``, e.g.
``{"noise_steps": "6-15"}``: noise on those steps only). The output is a
``StableDiffusion3PipelineOutput`` with an extra ``steering`` dict (method, nfe, rewards, result).
``pipe.edit(image, "a blue circle", reward)`` edits a source image by trajectory control (ITOC).
"""

from dataclasses import dataclass
from typing import Any

from diffusers import StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput


@dataclass
class FlowAlignSD3PipelineOutput(StableDiffusion3PipelineOutput):
    steering: dict[str, Any] | None = None  # method, nfe, reward_calls, rewards [B], result (SteerResult)


class FlowAlignSD3Pipeline(StableDiffusion3Pipeline):
    def __call__(
        self,
        *args: Any,
        steering: str | None = None,
        reward: Any = None,
        num_particles: int = 4,
        lam: float = 10.0,
        potential: str = "max",
        resample_steps: Any = None,
        step: str | None = None,
        noise_level: Any = None,
        nfe_budget: int | None = None,
        steering_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        parent = super().__call__
        if steering is None:
            return parent(*args, **kwargs)
        import torch

        from flowalign.steering.pipeline_support import steered_call, steering_info

        with torch.no_grad():
            images, res, a = steered_call(
                self,
                "sd3",
                parent,
                args,
                kwargs,
                steering=steering,
                reward=reward,
                num_particles=num_particles,
                lam=lam,
                potential=potential,
                resample_steps=resample_steps,
                step=step,
                noise_level=noise_level,
                nfe_budget=nfe_budget,
                steering_kwargs=steering_kwargs,
            )
        self.maybe_free_model_hooks()
        if not a["return_dict"]:
            return (images,)
        return FlowAlignSD3PipelineOutput(images=images, steering=steering_info(res))

    def edit(self, image: Any, prompt: Any, reward: Any, **kwargs: Any):
        """Reward-guided editing by trajectory control (``flowalign.steering.edit_control``): PIL image(s)
        or [B, 3, H, W] tensors in [0, 1], the target prompt(s) and a differentiable reward -> (edited PIL
        images, the ``SteerResult``); ``kwargs``: ``options=EditOptions(...)``, ``num_steps``, ``cfg``."""
        from flowalign.steering.edit_control import edit_pipeline

        return edit_pipeline(self, image, prompt, reward, **kwargs)
