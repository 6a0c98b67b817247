"""``python -m flowalign.cli ARGS`` == ``flowalign ARGS``."""

import sys

from . import main

sys.exit(main())
