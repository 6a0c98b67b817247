"""``flowalign testbed sample | eval``: draw from the shipped tiny SD3 pipeline, or measure it.

    flowalign testbed sample "two red circles" -o out.png [--steps N --guidance W --seed S --n K]
    flowalign testbed eval [--n-prompts N --seed 0 --json]

The lead's ``flowalign/cli.py`` calls ``add_arguments(parser)`` then ``run(args)``; ``main(argv)``
runs it standalone (``python -m flowalign.testbed.cli ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="testbed_command", metavar="{sample,eval}")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--assets", default=None, help="testbed assets folder (default: assets/testbed)")
    common.add_argument("--pipeline", default=None, help="pipeline folder (default: <assets>/pipeline)")
    common.add_argument("--steps", type=int, default=None, help="sampling steps (default: config.json)")
    common.add_argument("--guidance", type=float, default=None, help="CFG scale (default: config.json)")
    common.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("sample", parents=[common], help="generate images for one prompt")
    s.add_argument("prompt", help='e.g. "two red circles" or "a green triangle left of a yellow circle"')
    s.add_argument("-o", "--output", default="testbed_sample.png", help="PNG path")
    s.add_argument("--n", type=int, default=1, help="images (seeds seed..seed+n-1), tiled in a row")
    s.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscaling of the 32 px images")
    e = sub.add_parser("eval", parents=[common], help="GenEval-style metrics of the base pipeline")
    e.add_argument("--n-prompts", type=int, default=None, help="held-out prompts (default: all 219)")
    e.add_argument("--n-real", type=int, default=1000, help="real images for the scorer checks")
    e.add_argument("--json", action="store_true", help="print only the JSON object")


def _sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from . import world as W
    from .evaluate import generate
    from .paths import assets_dir
    from .pipeline import default_sampling, load_pipeline
    from .scorers import load_checker

    if args.n < 1 or args.scale < 1:
        raise ValueError(f"--n and --scale must be >= 1, got {args.n} and {args.scale}")
    sampling = default_sampling(args.assets)
    steps = args.steps or sampling["num_inference_steps"]
    guidance = sampling["guidance_scale"] if args.guidance is None else args.guidance
    pipe_dir = args.pipeline or Path(assets_dir(args.assets, "pipeline")) / "pipeline"
    pipe = load_pipeline(pipe_dir)
    images = generate(pipe, [args.prompt] * args.n, steps, guidance, seed=args.seed)
    row = torch.cat(list(images), dim=2)  # [3, 32, 32 n]
    arr = (row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr)
    img = img.resize((img.width * args.scale, img.height * args.scale), Image.NEAREST)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    print(f"wrote {out} ({args.n} image(s), {steps} steps, guidance {guidance}, seed {args.seed})")
    try:
        labels = W.parse_prompt(args.prompt)
    except ValueError:
        print("prompt is outside the shapes-world grammar: no checker verdict")
        return 0
    res = load_checker(args.assets)(images, [labels] * args.n)
    names = [t if gi < 0 else f"{t}[{labels.groups[gi].color} {labels.groups[gi].shape}]" for t, gi in labels.clauses()]
    for i in range(args.n):
        verdict = ", ".join(f"{n}={'ok' if c else 'no'}" for n, c in zip(names, res.correct[i].tolist()))
        print(f"seed {args.seed + i}: clauses {res.fraction[i]:.2f} all_correct={bool(res.all_correct[i])}: {verdict}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import MAIN_KEYS, format_table, run_eval

    metrics = run_eval(
        args.n_prompts, args.seed, args.assets, args.pipeline, args.steps, args.guidance, n_real=args.n_real
    )
    if not args.json:
        print(format_table(metrics))
    print(json.dumps({k: metrics[k] for k in MAIN_KEYS} | {"n_prompts": metrics["n_prompts"]}))
    return 0


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return {"sample": _sample, "eval": _eval}[args.testbed_command](args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flowalign testbed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
