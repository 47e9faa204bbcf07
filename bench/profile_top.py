#!/usr/bin/env python3
"""Top functions of a py-spy ``--format raw`` profile (collapsed stacks).

    python bench/profile_top.py /tmp/fanout.txt [--top 25]

Prints, per function, the share of samples in which it is on top of the stack
(self) and anywhere on it (inclusive). A py-spy frame reads
``function (path/to/file.py:line)``; lines are dropped so a function is one row.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def function_of(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "lib/python3", "/work/main/", "/tmp/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path})"


def top(path: Path, n: int) -> str:
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [function_of(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for func in set(frames):
            incl_counts[func] += count
    if not total:
        return "no samples\n"
    out = [f"{total} samples\n", "self %  incl %  function"]
    for func, c in self_counts.most_common(n):
        out.append(f"{100 * c / total:6.1f}  {100 * incl_counts[func] / total:6.1f}  {func}")
    out.append("\ninclusive (top):\nincl %  function")
    for func, c in incl_counts.most_common(n):
        out.append(f"{100 * c / total:6.1f}  {func}")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    sys.stdout.write(top(a.profile, a.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
