"""``flowalign serve-reward NAME [--host 127.0.0.1] [--port 8000]``: a registered reward behind HTTP.

    flowalign serve-reward testbed_aesthetic --port 8000         # then: reward name remote:http://127.0.0.1:8000
    flowalign serve-reward ocr --options '{"det_limit_side_len": 320}' --port 0   # 0 = any free port

Prints ``serving NAME at URL`` once the socket listens (the URL holds the port actually bound), then
serves until Ctrl-C. The protocol (JSON + PNG, size limits, 4xx refusals) is ``flowalign.rewards.serve``.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import bounded, guarded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a reward name in flowalign.rewards.REWARDS, e.g. testbed_aesthetic or ocr")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=bounded(int, "[0, 65535]"), default=8000, help="port (default 8000; 0 = free)")
    parser.add_argument("--options", default="{}", help="JSON object of the reward factory's options")
    parser.add_argument("--max-batch", type=bounded(int, "[1, inf)"), default=64, help="images per request (64)")
    parser.add_argument(
        "--max-mb", type=bounded(float, "(0, inf)"), default=64.0, help="request body limit in MiB (64)"
    )
    parser.add_argument("--threads", type=bounded(int, "[1, inf)"), help="torch threads of the server")


def run(args: argparse.Namespace) -> int:
    return guarded("serve-reward", lambda: _serve(args), "serve-reward: stopped.")


def _serve(args: argparse.Namespace) -> int:
    from ..rewards import REWARDS

    if args.name not in REWARDS or args.name.startswith("remote:"):
        raise ValueError(f"unknown reward {args.name!r}; serve one of {sorted(REWARDS)}.")
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as err:
        raise ValueError(
            f'--options {args.options!r} is not JSON ({err}); pass e.g. \'{{"output": "prob"}}\'.'
        ) from None
    if not isinstance(options, dict):
        raise ValueError(f"--options must be a JSON object, got {args.options!r}.")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ..rewards.serve import serve

    def ready(url: str) -> None:
        print(f"serving {args.name} at {url}", flush=True)

    max_bytes = int(args.max_mb * (1 << 20))
    serve(args.name, options, args.host, args.port, max_batch=args.max_batch, max_bytes=max_bytes, ready=ready)
    print("serve-reward: stopped.", file=sys.stderr)
    return 0
