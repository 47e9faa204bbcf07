"""``python tests/sim/run.py --seed N``: the same as ``python -m tests.sim --seed N``."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from tests.sim.__main__ import main

    sys.exit(main())
