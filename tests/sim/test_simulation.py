"""The deterministic simulation (``world.py``) over a fixed list of seeds.

Each seed is its own test; a failure's message starts with ``seed=N`` and
``python -m tests.sim --seed N --trace`` replays it event by event. A longer
campaign: ``python -m tests.sim --seeds 1000``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .world import run_seed

# Seeds 0-29 are the standing sample. Seeds the simulation found failing are
# appended and stay here (no skip, no xfail) until the core is fixed:
#   78, 153: a client upgraded after its groupsTimeout had already run out since
#            its TCP accept is closed for "no groups" at whatever unrelated timer
#            fires next (first ping, leftover handshake timer): 1.35 s and 1.83 s
#            after its upgrade with groupsTimeout=3 s. See the (d) groupsTimeout
#            rule in world.py.
#   73452, 74429: a client that stopped reading got a graceful close (1001 at
#            shutdown, or any close before it); the core forgot it at once, so
#            the flushing close had no deadline and the socket stayed open
#            (invariant (c)). The core now aborts it at writeWait.
#   203969: a false alarm of the simulation itself: the listener's answer was lost
#            to a Redis restart, the hub asked again once the links were back,
#            and the probe came before the listener's (up to 5 s) answer could.
#            The settle time now includes the listener's delay after the heal.
#   16 (in the sample), 91 (and 343, left out for CI time): history (h4): a group's first read answered
#            (on the command link) before the push of an entry published between the SUBSCRIBE and that read
#            (on the subscriber link); the group
#            started at the read's position and dropped the entry as a duplicate: no member ever got it.
#            History now delivers such late entries (``_Group.fresh``; tests/core/test_history_sim_found.py).
#   Redis Cluster (seeds N % 7 == 4 that are not Sentinel's, tests/sim/cluster.py; 4, 18 and 25 of the sample
#   ran standalone before): 32 and 200 (CLUSTER SLOTS only), 81 and 116 (classic pub/sub), 109 (-ASK), 46,
#   60, 102, 193; and, found failing (tests/core/test_cluster.py has each bug's test):
#   144 (and 340, 368, 389, 753, 809, 30356, ...): a key's client messages published out of order when
#            their slot moved while the old master still owed answers for it ((b)).
#   298: a redialled old master, a replica since a failover, answered FUNCTION LOAD -READONLY and history
#            went off for good ((h): a reset though the history held the entry); with that fixed, a -MOVED
#            to the new master bounced with a lagging topology at one instant (event budget exhausted).
#   30127 (and 30862): a false alarm of the simulation: a write-paused member's frames wait in the hub, and
#            an entry queued before its key left the group went out after the rejoin; the model now counts a
#            live entry in the stint the hub received it in.
#   30907: history (h4): a live entry held behind a repair read, and the history trimmed past it before the
#            read ran (the command link was down for 5 s); it was dropped as a duplicate behind the read's
#            later entries. History now delivers held entries in the read's gap (``History._fill``).
CLUSTER_SEEDS = [32, 46, 60, 81, 102, 109, 116, 144, 193, 200, 298]
SEEDS = [*range(30), 78, 153, 73452, 74429, 203969, 91, 30127, 30907, *CLUSTER_SEEDS]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed={s}" for s in SEEDS])
def test_simulated_hub_keeps_every_invariant(seed: int) -> None:
    result = run_seed(seed)
    assert result["events"] > 0


@pytest.mark.parametrize("seed", [7, 46], ids=["standalone", "cluster"])
def test_a_seed_replays_identically_whatever_the_hash_seed(seed: int) -> None:
    """The printed seed is enough to replay a run: hash randomization does not change it."""
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-m", "tests.sim", "--seed", str(seed), "--fingerprint"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outputs.add(proc.stdout)
    assert len(outputs) == 1, outputs
    in_process = run_seed(seed, fingerprint=True)
    assert f"fingerprint={in_process['fingerprint']} " in outputs.pop()
