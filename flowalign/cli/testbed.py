"""``flowalign testbed sample | eval [key=value ...]``: draw from the shipped tiny SD3 pipeline, or measure it.

    flowalign testbed sample "two red circles" -o out.png [--steps N --guidance W --seed S --n K]
    flowalign testbed sample "two red circles" n=4 scale=2 output=row.png
    flowalign testbed eval [--n-prompts N --seed 0 --json]     # or: flowalign testbed eval n_prompts=20

The configs are ``flowalign.testbed.jobs.SampleJob`` / ``EvalJob``; flags are shorthands for their
keys, applied after the positional overrides.
"""

from __future__ import annotations

import argparse
import json
import os

from . import bounded, flag_overrides, guarded

COMMON = {"assets": "assets", "pipeline": "pipeline", "steps": "steps", "guidance": "cfg", "seed": "seed"}
FLAGS = {
    "sample": {**COMMON, "output": "output", "n": "n", "scale": "scale"},
    "eval": {**COMMON, "n_prompts": "n_prompts", "n_real": "n_real"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="testbed_command", metavar="{sample,eval}")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--assets", help="testbed assets folder (default: assets/testbed)")
    common.add_argument("--pipeline", help="pipeline folder (default: <assets>/pipeline)")
    common.add_argument("--steps", type=bounded(int, "[1, inf)"), help="sampling steps (default: config.json)")
    common.add_argument(
        "--guidance", type=bounded(float, "[0, inf)"), help="classifier-free guidance scale (default: config.json)"
    )
    common.add_argument("--seed", type=bounded(int, "[0, inf)"), help="seed (default 0)")
    s = sub.add_parser("sample", parents=[common], help="generate images for one prompt")
    s.add_argument("prompt", help='e.g. "two red circles" or "a green triangle left of a yellow circle"')
    s.add_argument("config", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. n=4 scale=2")
    s.add_argument("-o", "--output", help="PNG path (default testbed_sample.png)")
    s.add_argument(
        "--n", type=bounded(int, "[1, inf)"), help="images (seeds seed..seed+n-1), tiled in a row (default 1)"
    )
    s.add_argument(
        "--scale", type=bounded(int, "[1, inf)"), help="nearest-neighbour upscaling of the 32 px images (default 4)"
    )
    e = sub.add_parser("eval", parents=[common], help="GenEval-style metrics of the base pipeline")
    e.add_argument("config", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. n_prompts=20")
    e.add_argument("--n-prompts", type=bounded(int, "[1, inf)"), help="held-out prompts (default: all 219)")
    e.add_argument("--n-real", type=bounded(int, "[1, inf)"), help="real images for the scorer checks (default 1000)")
    e.add_argument("--json", action="store_true", help="print only the JSON object")


def run(args: argparse.Namespace) -> int:
    from ..overrides import apply_overrides
    from ..testbed import jobs

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = args.testbed_command

    def job() -> int:
        overrides = [*args.config, *flag_overrides(args, FLAGS[command])]
        job = apply_overrides(jobs.SampleJob(prompt=args.prompt) if command == "sample" else jobs.EvalJob(), overrides)
        jobs.validate(job)  # every value, folder and the output file, before the pipeline loads
        if command == "sample":
            print("\n".join(jobs.sample(job)))
            return 0
        from ..testbed.evaluate import MAIN_KEYS, format_table

        metrics = jobs.evaluate(job)
        if not args.json:
            print(format_table(metrics))
        print(json.dumps({k: metrics[k] for k in MAIN_KEYS} | {"n_prompts": metrics["n_prompts"]}))
        return 0

    return guarded(f"testbed {command}", job, "interrupted")
