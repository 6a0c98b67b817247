"""``flowalign steer [PRESET] [key=value ...] [flags]``: steer or search a model for some prompts.

    flowalign steer --prompt "two red circles" --method fk --particles 4 --lam 10 --out runs/steer
    flowalign steer testbed_fk_tuned prompts='["two red circles"]' method.options.particles=8
    flowalign steer --model tiny-sd3 --reward clip --method dts_star --nfe-budget 400 ...

The config is ``flowalign.steering.config.SteerConfig`` (``--print-config`` shows it); the flags are
shorthands for its keys, applied after the positional overrides (``--method`` first, so the other
flags land in that method's options). ``--set key=value`` is ``method.options.key=value``. Writes
``<out>/<i>_<method>.png`` and ``<out>/steer.json`` (``flowalign.steering.job``).
"""

from __future__ import annotations

import argparse

from ..steering.config import METHODS, STEER_PRESETS
from . import add_config_arguments, bounded, flag_overrides, guarded, print_config

FLAGS = {  # argparse dest -> config key
    "method": "method.kind",
    "model": "model",
    "prompt": "prompts",
    "prompts_file": "prompts_file",
    "reward": "reward",
    "reward_path": "reward_path",
    "particles": "method.options.particles",
    "lam": "method.options.lam",
    "potential": "method.options.potential",
    "resample_steps": "method.options.resample_steps",
    "nfe_budget": "method.options.nfe_budget",
    "step_kind": "method.options.step",
    "noise_level": "method.options.noise_level",
    "noise_steps": "method.options.noise_steps",
    "steps": "steps",
    "cfg": "cfg",
    "size": "size",
    "max_seq": "max_sequence_length",
    "seed": "seed",
    "out": "out",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, STEER_PRESETS, "method.kind=bon method.options.particles=8")
    add = parser.add_argument
    add("--model", help="'testbed' (default), a registered name (tiny-sd3, tiny-flux) or a pipeline directory")
    add("--prompt", action="append", help="a prompt (repeatable)")
    add("--prompts-file", help="a text file with one prompt per line")
    add("--reward", help="a reward name in flowalign.rewards.REWARDS (default: compositional)")
    add("--reward-path", help="weights for the reward (file or directory)")
    add("--method", choices=METHODS, help="the steering method (default: fk)")
    add(
        "--particles",
        type=bounded(int, "[1, inf)"),
        help="FK particles / best-of-N samples / beam particles (beams x children)",
    )
    add("--lam", type=bounded(float, "[0, inf)"), help="inverse temperature of the tilt exp(lam r)")
    add("--potential", help="FK potential: max, diff, sum or rt")
    add("--resample-steps", help="0-based steps of FK resampling, beam selection or DTS branching, e.g. 7-14")
    add("--nfe-budget", type=bounded(int, "[1, inf)"), help="model evaluations per prompt")
    add("--steps", type=bounded(int, "[1, inf)"), help="sampling steps (default: the model's)")
    add("--step-kind", help="step function (default flow_sde; best-of-N: ode)")
    add("--noise-level", type=bounded(float, "[0, inf)"), help="SDE noise level (default 0.7)")
    add("--noise-steps", help="0-based steps that get SDE noise, ODE elsewhere, e.g. 6-15 (default: all but the last)")
    add("--cfg", type=bounded(float, "[0, inf)"), help="classifier-free guidance scale (default: the model's)")
    add("--size", type=bounded(int, "[1, inf)"), help="image height = width in pixels")
    add(
        "--max-seq",
        type=bounded(int, "[1, 512]"),
        help="T5 max_sequence_length (default the pipeline's 256; the testbed works with >= 16)",
    )
    add("--seed", type=bounded(int, "[0, inf)"), help="seed (default 0)")
    add(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method.options.KEY=VALUE, e.g. --set final=argmax",
    )
    add("--out", help="output directory (default runs/steer)")


def config_from_args(args: argparse.Namespace):
    """The preset, then the positional overrides, then the flags -> ``SteerConfig``."""
    from ..overrides import resolve
    from ..steering.config import parse_step_list

    for flag in ("resample_steps", "noise_steps"):  # a malformed list names the flag that held it
        parse_step_list(getattr(args, flag), "--" + flag.replace("_", "-"))
    for pair in args.set:
        if "=" not in pair:
            raise ValueError(f"--set {pair!r} must look like key=value, e.g. --set lookahead=ode.")
    flags = flag_overrides(args, FLAGS) + [f"method.options.{pair}" for pair in args.set]
    return resolve(STEER_PRESETS, [*args.config, *flags], "testbed")


def run(args: argparse.Namespace) -> int:
    def job() -> int:
        cfg = config_from_args(args)
        if args.print_config:
            return print_config(cfg)
        from ..steering.config import validate
        from ..steering.job import run_steer

        validate(cfg)  # every value, name, file and the output folder, before the model loads
        r = run_steer(cfg)
        print(
            f"{r['method']}: mean reward {r['mean_reward']:.4f}, {r['nfe_per_prompt']:.0f} NFE per prompt, "
            f"{r['seconds']:.1f} s -> {cfg.out}"
        )
        return 0

    return guarded("steer", job, "interrupted; nothing was written")
