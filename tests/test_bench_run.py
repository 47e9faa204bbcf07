"""bench/run.py still runs its scenarios end to end: the memory broker's rig, api_publish and the A/B mechanism.

Not a benchmark (nothing is timed or compared): tens of clients, sub-second
steps, so that a change of the hub's HTTP API, config keys or startup breaks
this test instead of silently rotting the benchmark. Each run starts its own
redis-server (when the server uses Redis), the hub, the Node helpers and load
generator, as a real benchmark does. Needs node and ``npm ci`` in bench/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(not (ROOT / "bench" / "node_modules" / "ws").is_dir(),
                       reason="bench/node_modules is missing (cd bench && npm ci)"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


def run_bench(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    for server, res in result["results"].items():
        assert "error" not in res, (server, res, proc.stderr)
    return result


def test_fanout_on_both_brokers_both_shells_and_the_old_tree() -> None:
    """The memory broker's listener and publisher go through the HTTP API; ``proto`` is the A/B copy;
    ``wshub-trio`` is ``python -m wshub_trio``."""
    result = run_bench("fanout", "--server", "wshub,wshub-memory,proto,wshub-trio", "--hub-pythonpath", str(ROOT),
                       "--clients", "20", "--groups", "2", "--rates", "20", "--seconds", "0.5", "--drain", "5")
    for server in ("wshub", "wshub-memory", "proto", "wshub-trio"):
        res = result["results"][server]
        assert res["clients"] == 20
        [step] = res["steps"]
        assert step["published"] == 10
        assert step["complete"] and step["lost"] == 0
        assert step["deliveries"] == 10 * 10  # each message reaches its group's 10 members
        assert step["cpu_us_per_delivery"] >= 0
        assert res["hub_source"] == str(ROOT)  # proto: the --hub-pythonpath tree (here the same one)
    memory = result["results"]["wshub-memory"]["steps"][0]
    assert memory["redis_cpu_util"] is None and memory["no_subscriber"] is None
    assert result["results"]["wshub"]["steps"][0]["no_subscriber"] == 0
    assert set(result["ratio_wshub-memory_over_wshub"]) == {"max_deliveries_per_s"}
    assert set(result["ratio_proto_over_wshub"]) == {"max_deliveries_per_s"}
    assert set(result["ratio_wshub-trio_over_wshub"]) == {"max_deliveries_per_s"}


def test_api_publish_counts_every_publish_and_delivery() -> None:
    result = run_bench("api_publish", "--server", "wshub,wshub-memory", "--clients", "5", "--seconds", "0.3",
                       "--api-conns", "2", "--api-depth", "2", "--drain", "5")
    redis, memory = result["results"]["wshub"], result["results"]["wshub-memory"]
    assert sorted(redis) == ["api", "api_cpu_us_per_publish", "api_publishes_per_s", "hub_source", "members",
                             "redis", "redis_cpu_us_per_publish", "redis_publishes_per_s"]
    assert "redis" not in memory  # no Redis to PUBLISH to
    for way in (redis["api"], redis["redis"], memory["api"]):
        assert way["published"] > 0 and way["ok"] == way["published"] and way["errors"] == 0
        assert way["deliveries"] == way["expected_deliveries"] == 5 * way["ok"]
        assert way["lost"] == 0 and way["complete"]
        assert (way["conns"], way["depth"]) == (2, 2)
    assert redis["redis"]["redis_receivers"] == redis["redis"]["ok"]  # the hub's one subscription per message
    assert redis["api"]["redis_receivers"] is None


def test_memory_broker_refuses_what_needs_redis() -> None:
    for args in (["upstream", "--server", "wshub-memory"], ["fanout", "--server", "peer-memory"],
                 ["api_publish", "--server", "peer"], ["fanout", "--server", "wshub-memory", "--workers", "2"],
                 ["fanout", "--server", "peer-trio"]):
        proc = subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=30,
                              check=False)
        assert proc.returncode == 2, (args, proc.stderr)


def test_a_compressed_json_broadcast_is_smaller_on_the_wire_for_both_servers() -> None:
    """--compression and --fill json: the load generators inflate every frame, and count what came on the wire."""
    result = run_bench("broadcast", "--server", "wshub,peer,node", "--clients", "20", "--reps", "2", "--gap", "0.05",
                       "--size", "4096", "--fill", "json", "--compression", "--drain", "5")
    for server in ("wshub", "peer", "node"):
        res = result["results"][server]
        assert res["members"] == 20 and res["incomplete_reps"] == 0
        assert 0 < res["wire_bytes_per_broadcast"] < 20 * 4096 / 2  # JSON records deflate to under a quarter


def test_hold_reaches_every_member_from_several_source_addresses() -> None:
    """hold with workers: every client (three source addresses, two load generators) gets each broadcast, and
    the hub's tree shows its workers' open files; the Node peer (ws + ioredis) runs the same protocol."""
    result = run_bench("hold", "--server", "wshub,node", "--workers", "2", "--clients", "30", "--per-address", "10",
                       "--procs", "2", "--reps", "2", "--gap", "0.05", "--settle", "0.2", "--drain", "5")
    for server, processes in (("wshub", 3), ("node", 1)):
        res = result["results"][server]
        assert res["clients"] == res["grouped"] == 30 and res["failed"] == 0 and res["closed_early"] == 0
        assert res["incomplete_reps"] == 0 and len(res["to_last_member_ms"]) == 2
        assert len(res["processes"]) == processes
        assert sum(p["files"] for p in res["processes"]) >= 30  # every client's socket is one of them
    assert set(result["ratio_wshub_over_node"]) == {"connects_per_s", "rss_kib_per_conn", "last_member_max_ms"}


def test_presence_bench_counts_one_call_per_group_per_refresh() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "presence.py"), "--clients", "40", "--groups", "4",
                           "--timeout", "1.5", "--intervals", "3"], capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    off, on = json.loads(proc.stdout)["results"]
    assert (off["presence"], on["presence"]) == (False, True)
    assert "evalsha" not in off["redis_during_connects"] and on["redis_during_connects"]["evalsha"]["calls"] > 0
    # four groups and the heartbeat: five calls per interval, whatever the 40 connections (give or take one
    # refresh that falls on the window's edge)
    assert 4 <= on["per_refresh_interval"]["commands"]["evalsha"] <= 6


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_fanout_on_a_sharded_cluster_reaches_every_member() -> None:
    """--redis cluster-sharded: six redis-servers, the hub in cluster mode, the publisher SPUBLISHing each group's
    messages to the master of its slot (two groups: g0 and g1 hash to different masters)."""
    result = run_bench("fanout", "--server", "wshub", "--redis", "cluster-sharded", "--clients", "20", "--groups", "2",
                       "--rates", "20", "--seconds", "0.5", "--drain", "5")
    res = result["results"]["wshub@cluster-sharded"]
    [step] = res["steps"]
    assert step["published"] == 10 and step["complete"] and step["lost"] == 0
    assert step["deliveries"] == 10 * 10
    assert step["no_subscriber"] == 0  # SPUBLISH met the hub's subscription on the owner of every slot
