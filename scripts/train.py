#!/usr/bin/env python
"""Flow-GRPO training; the same as `flowalign train`.

python scripts/train.py                                   # testbed preset on CPU
python scripts/train.py sd35_pickscore data.train=prompts.txt reward.options.pickscore.path=/ckpt/pickscore
accelerate launch --config_file scripts/accelerate/multi_gpu.yaml scripts/train.py sd35_pickscore
python scripts/train.py --resume auto                     # continue the latest testbed run
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowalign.cli.train import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
