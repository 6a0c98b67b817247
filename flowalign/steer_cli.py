"""``flowalign steer``: steer or search a model for some prompts, write the images and a JSON report.

    flowalign steer --prompt "two red circles" --method fk --particles 4 --lam 10 --out runs/steer
    flowalign steer --model tiny-sd3 --reward clip --method dts_star --nfe-budget 400 ...

Writes ``<out>/<i>_<method>.png`` (the chosen image of prompt i) and ``<out>/steer.json`` with the
method, its arguments, the reward of each chosen image, the NFE spent (per prompt and in total),
reward calls and wall time. ``--set key=value`` passes any other keyword of the method (see
``flowalign.steering``; values are parsed as JSON when they can be).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

METHODS = ("fk", "bon", "beam", "svdd", "dts", "dts_star")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="testbed",
        help="'testbed' (the shipped shapes-world pipeline), a registered name (tiny-sd3, "
        "tiny-flux) or a saved diffusers pipeline directory",
    )
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", default=None, help="a text file with one prompt per line")
    parser.add_argument("--reward", default="compositional", help="a reward name in flowalign.rewards.REWARDS")
    parser.add_argument("--reward-path", default=None, help="weights for the reward (file or directory)")
    parser.add_argument("--method", default="fk", choices=METHODS)
    parser.add_argument(
        "--particles", type=int, default=4, help="FK particles / best-of-N samples / beam particles (beams x children)"
    )
    parser.add_argument("--lam", type=float, default=10.0, help="inverse temperature of the tilt exp(lam r)")
    parser.add_argument("--potential", default="max", help="FK potential: max, diff, sum or rt")
    parser.add_argument(
        "--resample-steps",
        default=None,
        help="0-based steps of FK resampling, beam selection or DTS branching, e.g. 7-14 or 4,8,12",
    )
    parser.add_argument("--nfe-budget", type=int, default=None, help="model evaluations per prompt")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--step-kind", default=None, help="step function (default flow_sde; best-of-N: ode)")
    parser.add_argument("--noise-level", type=float, default=None, help="SDE noise level (default 0.7)")
    parser.add_argument(
        "--noise-steps",
        default=None,
        help="0-based steps that get SDE noise, ODE elsewhere, e.g. 6-15 (default: all but the last)",
    )
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--size", type=int, default=None, help="image height = width in pixels")
    parser.add_argument(
        "--max-seq",
        type=int,
        default=None,
        help="T5 max_sequence_length (default the pipeline's 256; the testbed works with >= 16)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for the method, e.g. --set lookahead=ode --set widen_alpha=0.5",
    )
    parser.add_argument("--out", default="runs/steer", help="output directory")


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise ValueError(f"--prompts-file {path} does not exist; pass a text file with one prompt per line.")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompts: pass --prompt 'two red circles' (repeatable) or --prompts-file FILE.")
    return prompts


def _extra(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set {pair!r} must look like key=value, e.g. --set lookahead=ode.")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The method's keyword arguments from the command line (validated by the method itself)."""
    from .sampling.schedule import parse_steps

    kw: dict[str, Any] = {}
    steps = "all" if args.resample_steps == "all" else parse_steps(args.resample_steps, "--resample-steps")
    if args.method == "fk":
        kw.update(num_particles=args.particles, lam=args.lam, potential=args.potential, resample_steps=steps)
    elif args.method == "bon":
        kw.update(n=args.particles)
    elif args.method in ("beam", "svdd"):
        if args.method == "beam":
            bw = 2 if args.particles >= 2 else 1
            kw.update(beam_width=bw, num_children=max(1, args.particles // bw), select_steps=steps)
        else:
            kw.update(num_children=args.particles)
    else:
        kw.update(lam=args.lam, branch_steps=steps)
        if args.nfe_budget is None:
            kw["nfe_budget"] = None  # filled once the step count is known
    if args.nfe_budget is not None:
        kw["nfe_budget"] = args.nfe_budget
    if args.step_kind is not None:
        kw["step"] = args.step_kind
    if args.noise_level is not None:
        kw["noise_level"] = args.noise_level
    if args.noise_steps is not None:
        kw["noise_steps"] = parse_steps(args.noise_steps, "--noise-steps") or "all"
    kw.update(_extra(args.set))
    return kw


def load_model_with_defaults(name: str, max_seq: int | None):
    """(model, default steps, default guidance): the testbed's sampling defaults come from its assets."""
    from .models import MODELS, load_model

    kw = {} if max_seq is None else {"max_sequence_length": max_seq}
    if name == "testbed":
        from .testbed.paths import pipeline_dir
        from .testbed.pipeline import default_sampling

        model, cfg = load_model(str(pipeline_dir()), **kw), default_sampling()
        return model, cfg["num_inference_steps"], cfg["guidance_scale"]
    model = load_model(name) if name in MODELS else load_model(name, **kw)
    return model, model.default_steps, None


def run(args: argparse.Namespace) -> int:
    prompts = _prompts(args)
    kwargs = build_kwargs(args)
    import torch
    from PIL import Image

    from .rewards import load_reward
    from .steering import steer

    model, default_steps, default_cfg = load_model_with_defaults(args.model, args.max_seq)
    reward = load_reward(args.reward, path=args.reward_path)
    steps = args.steps or default_steps
    cfg = args.cfg if args.cfg is not None else default_cfg
    if kwargs.get("nfe_budget", 0) is None:  # DTS without a budget: as many evaluations as FK would use
        kwargs["nfe_budget"] = args.particles * steps
    size = args.size or getattr(model, "default_size", None)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    res = steer(
        args.method, model, prompts, reward, num_steps=steps, cfg=cfg, height=size, width=size, generator=gen, **kwargs
    )
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        images = model.decode(res.latents, size, size).clamp(0, 1)
    files = []
    for i, img in enumerate(images):
        arr = (img.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        name = f"{i:03d}_{res.method}.png"
        Image.fromarray(arr).save(out / name)
        files.append(name)
    report = {
        "method": res.method,
        "model": args.model,
        "reward": args.reward,
        "seed": args.seed,
        "steps": steps,
        "cfg": cfg,
        "kwargs": {k: v for k, v in kwargs.items()},
        "prompts": prompts,
        "images": files,
        "rewards": [float(r) for r in res.rewards],
        "mean_reward": float(res.rewards.mean()),
        "nfe": int(res.nfe),
        "nfe_per_prompt": res.nfe / len(prompts),
        "reward_calls": int(res.reward_calls),
        "seconds": round(seconds, 3),
    }
    (out / "steer.json").write_text(json.dumps(report, indent=2))
    print(
        f"{res.method}: mean reward {report['mean_reward']:.4f}, {report['nfe_per_prompt']:.0f} NFE per prompt, "
        f"{seconds:.1f} s -> {os.fspath(out)}"
    )
    return 0
