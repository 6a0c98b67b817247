"""``flowalign train [PRESET] [key=value ...] [--resume DIR|auto]``: parse, then ``flowalign.train.run``."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.presets import PRESETS

    parser.add_argument(
        "preset",
        nargs="?",
        default=None,
        help=f"one of {sorted(PRESETS)} (default: testbed, or the resumed run's config)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="dotted config overrides, e.g. sample.num_steps=8 optim.lr=1e-4 credit.kind=dense",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="DIR|auto",
        help="continue from a checkpoint or run directory; 'auto' = the latest complete checkpoint",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from . import guarded

    def job() -> int:
        from ..overrides import to_dict
        from ..train.faults import Interrupted, RunStopped
        from ..train.run import main, resolve_config

        cfg, resume = resolve_config(args.preset, list(args.overrides), args.resume)
        if args.print_config:
            print(json.dumps(to_dict(cfg), indent=1))
            return 0
        try:
            main(cfg, resume=resume)
        except Interrupted as err:  # SIGINT / SIGTERM: the command that continues this run, as it runs
            print(err, file=sys.stderr)
            return 130
        except RunStopped as err:  # a fault the run could not get past; a checkpoint was saved
            print(f"flowalign train: stopped: {err}", file=sys.stderr)
            return 1
        return 0

    return guarded("train", job, "interrupted before training started; nothing to resume")


def cli(argv: list[str] | None = None) -> int:
    """``python scripts/train.py ...`` (same arguments as ``flowalign train``)."""
    parser = argparse.ArgumentParser(prog="train.py", description="Flow-GRPO training (see flowalign train --help).")
    add_arguments(parser)
    return run(parser.parse_args(argv))
