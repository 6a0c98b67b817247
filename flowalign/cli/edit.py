"""``flowalign edit --source IMAGE --prompt TEXT [flags]``: reward-guided editing by trajectory optimal control.

    flowalign edit --source red.png --prompt "a blue circle" --reward testbed_aesthetic --sigma 0.6 --out runs/edit
    flowalign edit --source a.png --prompt "a blue circle" --reward compositional --reward-output soft --state invert

One ``--source`` per ``--prompt`` (the prompt conditions the edited trajectory). The method and every
option are ``flowalign.steering.edit_control`` (``EditOptions``). Bad input is one error before the model
loads: no source image, a source that is not an image or not the model's size, an option outside its
range (``--sigma`` in (0, 1]), an unknown reward, a reward without gradients (checked on the reward,
which is loaded first). Writes ``<out>/<i>_source.png``, ``<out>/<i>_edit.png`` and ``<out>/edit.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import bounded, guarded

OPTION_FLAGS = ("sigma", "state", "iterations", "lr", "reward_weight", "closeness", "control_cost")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--source", action="append", default=[], help="the image to edit (PNG / JPEG; repeatable, one per --prompt)")
    add("--prompt", action="append", default=[], help="the edit prompt (repeatable)")
    add("--model", default="testbed", help="'testbed' (default), a registered name or a pipeline directory")
    add("--reward", default="testbed_aesthetic", help="a differentiable reward in flowalign.rewards.REWARDS")
    add("--reward-path", help="weights for the reward (file or directory)")
    add("--reward-output", help="the reward's output kind where it has one (compositional: soft)")
    add("--sigma", type=bounded(float, "(0, 1]"), help="flow time the source is noised / inverted to (default 0.6)")
    add("--state", choices=["noise", "invert"], help="forward noising (default) or ODE inversion")
    add("--iterations", type=bounded(int, "[1, inf)"), help="control updates (default 15)")
    add("--lr", type=bounded(float, "(0, inf)"), help="Adam step on the controls (default 0.02)")
    add("--reward-weight", type=bounded(float, "(0, inf)"), help="weight of the reward in the objective (default 1)")
    add("--closeness", type=bounded(float, "[0, inf)"), help="weight of mean((x0 - x_src)^2) in latents (default 1)")
    add("--control-cost", type=bounded(float, "[0, inf)"), help="weight of the control energy (default 0)")
    add("--steps", type=bounded(int, "[1, inf)"), help="steps of the full grid (default: the model's)")
    add("--cfg", type=bounded(float, "[0, inf)"), help="classifier-free guidance scale (default: the model's)")
    add("--size", type=bounded(int, "[1, inf)"), help="image height = width (default: the model's)")
    add("--seed", type=bounded(int, "[0, inf)"), default=0)
    add("--out", default="runs/edit", help="output directory")


def model_size(model: str) -> int | None:
    """The default image size a saved SD3 folder (or the testbed) samples, read from its configs; None if unknown."""
    from ..inputs import check_model

    check_model(model)
    folder = Path(model).expanduser()
    if model == "testbed":
        from ..testbed.paths import pipeline_dir

        folder = pipeline_dir()
    try:
        tr = json.loads((folder / "transformer" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        return int(tr["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_sources(paths: list[str], size: int | None) -> Any:
    """The source images [B, 3, H, W] in [0, 1]; one error for a missing, unreadable or wrong-size file."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    out = []
    for p in paths:
        try:
            with Image.open(Path(p).expanduser()) as im:
                if size is not None and im.size != (size, size):
                    raise ValueError(
                        f"--source {p!r} is {im.size[0]}x{im.size[1]} but the model samples {size}x{size}; "
                        f"resize it to {size}x{size} (or pass --size {im.size[0]} if the model supports it)."
                    )
                out.append(torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1))
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"--source {p!r} cannot be read as an image ({err}); pass a PNG or JPEG file.") from None
    return torch.stack(out)


def check(args: argparse.Namespace) -> tuple[Any, Any, int | None]:
    """Every check before the model loads -> (options, source images, size)."""
    from ..inputs import check_output
    from ..rewards import REWARDS
    from ..steering.edit_control import EditOptions, check_edit_options

    if not args.source:
        raise ValueError("no source image: pass --source IMAGE (one per --prompt), the image to edit.")
    if len(args.source) != len(args.prompt):
        raise ValueError(f"{len(args.source)} --source for {len(args.prompt)} --prompt; pass one source per prompt.")
    given = {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k) is not None}
    options = check_edit_options(EditOptions(**given), "--")
    if args.reward not in REWARDS:
        raise ValueError(f"--reward {args.reward!r} is unknown; choose one of {sorted(REWARDS)}.")
    check_output(args.out, "--out")
    size = args.size or model_size(args.model)
    return options, read_sources(args.source, size), size


def load_differentiable_reward(args: argparse.Namespace) -> Any:
    from ..rewards import load_reward

    kw = {} if args.reward_output is None else {"output": args.reward_output}
    reward = load_reward(args.reward, path=args.reward_path, **kw)
    if getattr(reward, "differentiable", None) is False:
        hint = " (compositional: --reward-output soft)" if args.reward == "compositional" else ""
        raise ValueError(
            f"--reward {args.reward!r} has no gradients (differentiable=False), which the trajectory control "
            f"needs; choose a differentiable reward{hint}."
        )
    return reward


def run(args: argparse.Namespace) -> int:
    def job() -> int:
        import torch

        from ..steering.config import load_model_with_defaults
        from ..steering.edit_control import edit_control
        from ..steering.job import _save

        options, sources, size = check(args)
        reward = load_differentiable_reward(args)  # before the model: a reward without gradients is refused first
        model, steps, cfg = load_model_with_defaults(args.model, None)
        size = size or model.default_size
        res = edit_control(
            model, args.prompt, reward, sources, options=options, num_steps=args.steps or steps,
            cfg=args.cfg if args.cfg is not None else cfg, height=size, width=size,
            generator=torch.Generator().manual_seed(args.seed),
        )  # fmt: skip
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            edits = model.decode(res.latents).clamp(0, 1)
        files = [
            [_save(s, out / f"{i:03d}_source"), _save(e, out / f"{i:03d}_edit")]
            for i, (s, e) in enumerate(zip(sources, edits))
        ]
        report = {
            "prompts": args.prompt, "files": files, "rewards": [float(r) for r in res.rewards], "nfe": res.nfe,
            "history": res.info["history"], "options": vars(options),
        }  # fmt: skip
        (out / "edit.json").write_text(json.dumps(report, indent=1))
        start, end = res.info["initial"]["reward"], float(res.rewards.mean())
        print(f"edit_control: reward {start:.4f} (SDEdit) -> {end:.4f}, {res.nfe} NFE -> {out}")
        return 0

    return guarded("edit", job, "interrupted; nothing was written")
