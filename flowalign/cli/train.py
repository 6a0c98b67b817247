"""``flowalign train [PRESET] [key=value ...] [--resume DIR|auto]``: parse, then ``flowalign.train.run``."""

from __future__ import annotations

import argparse
import json


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
        from ..train.run import main, resolve_config

        cfg, resume = resolve_config(args.preset, list(args.overrides), args.resume)
        if args.print_config:
            print(json.dumps(to_dict(cfg), indent=1))
        else:
            main(cfg, resume=resume)
        return 0

    return guarded("train", job, "interrupted; resume with `flowalign train --resume auto`")


def cli(argv: list[str] | None = None) -> int:
    """``python scripts/train.py ...`` (same arguments as ``flowalign train``)."""
    parser = argparse.ArgumentParser(prog="train.py", description="Flow-GRPO training (see flowalign train --help).")
    add_arguments(parser)
    return run(parser.parse_args(argv))
