#!/usr/bin/env python
"""Thin wrapper: ``python scripts/eval_gallery.py ARGS`` == ``flowalign gallery ARGS`` (see flowalign/cli/gallery.py).

    python scripts/eval_gallery.py --method base --method lora:runs/testbed/checkpoints/last \\
        --method fk:particles=4,potential=max,lambda=10 --seeds 0,1,2 --out runs/gallery
    python scripts/eval_gallery.py testbed_steering seeds=0,1 out=runs/gallery
"""

import sys

from flowalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["gallery", *sys.argv[1:]]))
