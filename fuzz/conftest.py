"""Fuzzing the Sans-IO core with Hypothesis (``pytest fuzz/``).

The harness lives in ``tests/core/harness.py``; this makes it importable as
``core.harness`` when only ``fuzz/`` is collected. ``WSHUB_FUZZ_EXAMPLES``
sets max_examples for every fuzz test (default: a CI-sized run, about a minute
in all), e.g. ``WSHUB_FUZZ_EXAMPLES=20000 pytest fuzz/`` for a long run.
"""

from __future__ import annotations

import os
import sys

_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests")
_TESTS = os.path.normpath(_TESTS)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
