#!/usr/bin/env python
"""Thin wrapper: ``python scripts/steer.py ARGS`` == ``flowalign steer ARGS`` (see flowalign/cli/steer.py)."""

import sys

from flowalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["steer", *sys.argv[1:]]))
