"""The jobs of ``flowalign testbed``: draw from the shipped tiny SD3 pipeline, or measure it.

``SampleJob`` / ``EvalJob`` are their configs (``key=value`` overrides and the command's flags set
them); ``sample(job)`` writes a PNG row of ``n`` images and returns what to report (with the
compositional checker's verdict per image when the prompt is in the shapes-world grammar);
``evaluate(job)`` returns the GenEval-style metrics of ``evaluate.run_eval``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ranges import ranged


@dataclass
class SampleJob:
    prompt: str = "two red circles"  # e.g. "a green triangle left of a yellow circle"
    output: str = "testbed_sample.png"  # PNG path
    n: int = ranged(1, "[1, inf)")  # images (seeds seed..seed+n-1), tiled in a row
    scale: int = ranged(4, "[1, inf)")  # nearest-neighbour upscaling of the 32 px images
    steps: int | None = ranged(None, "[1, inf)")  # sampling steps; None: the assets' config.json
    cfg: float | None = ranged(None, "[0, inf)")  # classifier-free guidance scale; None: the assets' config.json
    seed: int = ranged(0, "[0, inf)")
    assets: str | None = None  # testbed assets folder; None: assets/testbed
    pipeline: str | None = None  # pipeline folder; None: <assets>/pipeline


@dataclass
class EvalJob:
    n_prompts: int | None = ranged(None, "[1, inf)")  # held-out prompts; None: all 219
    n_real: int = ranged(1000, "[1, inf)")  # real images for the scorer checks
    steps: int | None = ranged(None, "[1, inf)")  # sampling steps; None: the assets' config.json
    cfg: float | None = ranged(None, "[0, inf)")  # classifier-free guidance scale; None: the assets' config.json
    seed: int = ranged(0, "[0, inf)")
    assets: str | None = None  # testbed assets folder; None: assets/testbed
    pipeline: str | None = None  # pipeline folder; None: <assets>/pipeline


def validate(job: SampleJob | EvalJob) -> None:
    """Every check of a testbed job that needs no model (values, the prompt, the assets and pipeline
    folders, the output PNG); one ValueError naming the key, the value and the fix."""
    from ..ranges import check_ranges
    from .paths import assets_dir

    check_ranges(job)
    try:
        root = assets_dir(job.assets, "pipeline")
    except ValueError as err:
        raise ValueError(f"assets={job.assets!r}: {err}" if job.assets is not None else str(err)) from None
    pipe = Path(job.pipeline) if job.pipeline is not None else root / "pipeline"
    if not (pipe / "model_index.json").is_file():
        raise ValueError(f"pipeline={str(pipe)!r} holds no saved pipeline (model_index.json); pass the folder of one.")
    if isinstance(job, SampleJob):
        if not job.prompt.strip():
            raise ValueError(f"prompt={job.prompt!r} is empty; pass e.g. 'two red circles'.")
        _check_png(job.output)


def _check_png(output: str) -> None:
    """``output`` names an image file PIL can write, where it can be written."""
    from PIL import Image

    from ..inputs import check_output

    check_output(output, "output", folder=False)
    ext = os.path.splitext(output)[1].lower()
    if Image.registered_extensions().get(ext) not in Image.SAVE:
        raise ValueError(f"output={output!r} has no image extension PIL can write; use e.g. output=sample.png.")


def sample(job: SampleJob) -> list[str]:
    """Draw ``job.n`` images of ``job.prompt``, write them side by side to ``job.output`` -> report lines."""
    import numpy as np
    import torch
    from PIL import Image

    from .evaluate import generate
    from .paths import assets_dir
    from .pipeline import default_sampling, load_pipeline

    validate(job)
    sampling = default_sampling(job.assets)
    steps = job.steps or sampling["num_inference_steps"]
    guidance = sampling["guidance_scale"] if job.cfg is None else job.cfg
    pipe = load_pipeline(job.pipeline or Path(assets_dir(job.assets, "pipeline")) / "pipeline")
    images = generate(pipe, [job.prompt] * job.n, steps, guidance, seed=job.seed)
    row = torch.cat(list(images), dim=2)  # [3, 32, 32 n]
    img = Image.fromarray((row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    img = img.resize((img.width * job.scale, img.height * job.scale), Image.NEAREST)
    out = Path(job.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    lines = [f"wrote {out} ({job.n} image(s), {steps} steps, guidance {guidance}, seed {job.seed})"]
    return lines + _verdicts(job, images)


def _verdicts(job: SampleJob, images: Any) -> list[str]:
    """The compositional checker's verdict on every clause of the prompt, per image."""
    from . import world as W
    from .scorers import load_checker

    try:
        labels = W.parse_prompt(job.prompt)
    except ValueError:
        return ["prompt is outside the shapes-world grammar: no checker verdict"]
    res = load_checker(job.assets)(images, [labels] * job.n)
    names = [t if gi < 0 else f"{t}[{labels.groups[gi].color} {labels.groups[gi].shape}]" for t, gi in labels.clauses()]
    lines = []
    for i in range(job.n):
        verdict = ", ".join(f"{n}={'ok' if c else 'no'}" for n, c in zip(names, res.correct[i].tolist()))
        lines.append(
            f"seed {job.seed + i}: clauses {res.fraction[i]:.2f} all_correct={bool(res.all_correct[i])}: {verdict}"
        )
    return lines


def evaluate(job: EvalJob) -> dict[str, Any]:
    """GenEval-style metrics of the base pipeline on the held-out prompts (``evaluate.run_eval``)."""
    from .evaluate import run_eval

    validate(job)
    return run_eval(job.n_prompts, job.seed, job.assets, job.pipeline, job.steps, job.cfg, n_real=job.n_real)
