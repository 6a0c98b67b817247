"""``flowalign`` command line: one subcommand per job, each a thin module of this package.

A command module provides ``add_arguments(parser)`` and ``run(args) -> int``: it parses the command
line and makes one call into the library. Modules are imported only when chosen, so ``flowalign
--help`` stays fast. The config commands (train, steer, gallery) read ``[PRESET] key=value ...``
(``flowalign.overrides``); their flags are shorthands applied as overrides after those
(``flag_overrides``), so both forms meet in one config object.

Bad input is refused before anything loads, with ONE stderr line ``flowalign <cmd>: error: ...`` and
exit 2: argparse's own errors (``Parser``; numeric flags are typed by ``bounded``, e.g. ``--particles
0``), and every ValueError a command's config check raises (``guarded``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

SUBCOMMANDS = {
    "train": ("flowalign.cli.train", "Flow-GRPO training (default: the testbed preset on CPU)"),
    "steer": ("flowalign.cli.steer", "inference-time steering / search: FK particles, best-of-N, beam, DTS / DTS*"),
    "gallery": (
        "flowalign.cli.gallery",
        "prompts x seeds x methods (base, LoRA, steering) -> images, reward tables, HTML gallery, plots",
    ),
    "edit": ("flowalign.cli.edit", "reward-guided editing of a source image by trajectory optimal control"),
    "testbed": ("flowalign.cli.testbed", "the shapes-world testbed: sample images, evaluate the base pipeline"),
    "info": ("flowalign.cli.info", "versions, step kinds and registered components"),
    "plan": ("flowalign.cli.plan", "peak memory per GPU, FLOPs and time per iteration of a preset on N GPUs"),
    "serve-reward": ("flowalign.cli.serve_reward", "serve a registered reward over HTTP (use it as remote:URL)"),
}


class Parser(argparse.ArgumentParser):
    """argparse with its error on ONE line (no usage block): ``<prog>: error: <message>; see `<prog>
    --help`.`` and exit 2, like every other refusal of the command line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`.\n")


def bounded(kind: type, rule: str) -> Callable[[str], Any]:
    """An argparse ``type=`` for a number in ``rule`` (``flowalign.ranges`` syntax, e.g. ``"[1, inf)"``):
    anything else is argparse's one-line error naming the flag, the value and the range."""
    from ..ranges import in_range

    what = "an int" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; pass {what} in {rule}") from None
        if not in_range(float(value), rule):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; pass {what} in {rule}")
        return value

    parse.__name__ = f"{kind.__name__} in {rule}"
    return parse


def guarded(prog: str, job: Callable[[], int], interrupted: str) -> int:
    """Run a subcommand's job: a ValueError (bad input, raised at the boundary) becomes one
    ``flowalign <prog>: error: ...`` line and exit 2 (``FLOWALIGN_DEBUG=1`` re-raises it); Ctrl-C
    prints how to resume (``interrupted``) and exits 130."""
    try:
        return job()
    except ValueError as err:
        if os.environ.get("FLOWALIGN_DEBUG"):
            raise
        print(f"flowalign {prog}: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def add_config_arguments(parser: argparse.ArgumentParser, presets: Iterable[str], example: str) -> None:
    """The positional ``[PRESET] key=value ...`` and ``--print-config`` of a config command."""
    parser.add_argument(
        "config",
        nargs="*",
        default=[],
        metavar="[PRESET] KEY=VALUE",
        help=f"a preset (one of {sorted(presets)}; default testbed), then dotted config overrides, e.g. {example}",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def flag_overrides(args: argparse.Namespace, keys: Mapping[str, str]) -> list[str]:
    """The flags given on the command line (``keys``: argparse dest -> config key) as ``key=value``
    overrides, in the table's order; lists are written as JSON, booleans as true / false."""
    out = []
    for dest, key in keys.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = json.dumps(list(value))
        out.append(f"{key}={value}")
    return out


def print_config(cfg: object) -> int:
    from ..overrides import to_dict

    print(json.dumps(to_dict(cfg), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="flowalign", description="Align flow-matching text-to-image models with rewards.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = (argv if argv is not None else sys.argv[1:])[:1]
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if chosen == [name]:  # import only the module that will run
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
