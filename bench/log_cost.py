#!/usr/bin/env python3
"""CPU of one log line as the hub writes it: the connect line, through the shell's formatter, to stderr.

    python bench/log_cost.py [--lines 20000] [--json] 2>/dev/null

A client's lifetime at ``logLevel: info`` writes three such lines (connected,
groups set, closed); ``logLevel: warning`` writes none. Prints one JSON line to
stdout; point stderr where the hub's would go (a file, a pipe, /dev/null).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys

from wshub_asyncio._logging import setup_logging


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--lines", type=int, default=20000)
    p.add_argument("--json", action="store_true", help="logFormat: json")
    a = p.parse_args()
    setup_logging(json_lines=a.json)
    log = logging.getLogger("wshub")
    before = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(a.lines):
        log.info("client %s%d connected: %s sha256:%s", "", i, "session_key", "3f2a9c1d",
                 extra={"event": "connect", "conn": i, "key": "3f2a9c1d"})
    after = resource.getrusage(resource.RUSAGE_SELF)
    user = (after.ru_utime - before.ru_utime) / a.lines * 1e6
    system = (after.ru_stime - before.ru_stime) / a.lines * 1e6
    print(json.dumps({"lines": a.lines, "format": "json" if a.json else "text",
                      "cpu_us_per_line": round(user + system, 2), "user_us": round(user, 2),
                      "sys_us": round(system, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
