"""Run the deterministic simulation from the command line.

    python -m tests.sim --seed 17            # replay one seed (add --trace for every event)
    python -m tests.sim --seeds 1000         # a campaign: seeds 0..999, then a summary line
    python -m tests.sim --seeds 500 --start 10000
    python -m tests.sim --seeds 500 --cluster   # 500 Redis Cluster seeds (N % 7 == 4, not Sentinel's)

Exit status: 0 if every seed passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

from .cluster import is_cluster_seed
from .world import SimFailure, run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seed", type=int, help="replay one seed")
    group.add_argument("--seeds", type=int, help="run this many seeds, starting at --start")
    parser.add_argument("--start", type=int, default=0, help="first seed of a campaign (default 0)")
    parser.add_argument("--trace", action="store_true", help="print every simulated event (with --seed)")
    parser.add_argument("--fingerprint", action="store_true",
                        help="also print a checksum of the event sequence (to compare replays)")
    parser.add_argument("--cluster", action="store_true",
                        help="campaign: only Redis Cluster seeds (the first --seeds of them from --start)")
    parser.add_argument("--quiet", action="store_true", help="campaign: print failures and the summary only")
    args = parser.parse_args(argv)

    if args.seed is not None:
        try:
            result = run_seed(args.seed, verbose=args.trace, fingerprint=args.fingerprint)
        except SimFailure as exc:
            print(f"FAIL {exc}")
            return 1
        print(f"ok seed={args.seed} " + " ".join(f"{k}={v}" for k, v in result.items() if k != "seed"))
        return 0

    started = time.perf_counter()
    failures: list[int] = []
    events = 0
    virtual = 0.0
    seeds = range(args.start, args.start + args.seeds)
    if args.cluster:
        seeds = range(args.start, args.start + 14 * args.seeds + 14)  # about 2 in 14 are cluster seeds
        seeds = [s for s in seeds if is_cluster_seed(s)][: args.seeds]  # type: ignore[assignment]
    for seed in seeds:
        try:
            result = run_seed(seed, fingerprint=args.fingerprint)
        except SimFailure as exc:
            failures.append(seed)
            first_line = str(exc).splitlines()[0]
            print(f"FAIL {first_line}", flush=True)
            continue
        events += result["events"]
        virtual += result["virtual_seconds"]
        if not args.quiet:
            extra = f" fingerprint={result['fingerprint']}" if args.fingerprint else ""
            print(f"ok seed={seed} events={result['events']}{extra}", flush=True)
    wall = time.perf_counter() - started
    kind = " cluster" if args.cluster else ""
    print(f"simulation summary: seeds run={len(seeds)}{kind} (from {args.start}) failures={len(failures)} "
          f"events simulated={events} virtual time={virtual:.0f}s wall={wall:.1f}s"
          + (f" failing seeds={failures}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
