#!/usr/bin/env python3
"""An example WS-Hub listener: answers every new client with its groups.

The hub PUBLISHes a client's key on ``PREFIXclient-new`` once it is subscribed
to ``PREFIXgroups-new:KEY``; this listener answers at once on that channel
with a JSON array of groups:

* every group of ``--groups`` (a comma list, default ``all``), and
* one group per ``--key-group`` template, with ``{key}`` replaced by the
  client's key (default ``user-{key}``, so a service can reach one user by
  publishing on ``PREFIXgroup-data:user-KEY``). Pass ``--key-group ''`` for none.

It also reports ``PREFIXclient-gone`` (a key's last connection closed).
Each event is printed as one line on stdout, so a supervisor or a test can
follow it; ``ready`` is printed once the subscriptions are confirmed.

Usage:
    python example/listener.py --redis 127.0.0.1:6379 --prefix ws-hub: --groups all,news
    python example/listener.py --redis redis://:secret@redis.internal:6379/0

Needs redis-py (``pip install 'wshub[example]'`` or ``pip install redis``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="WS-Hub example listener: answers client-new with groups")
    parser.add_argument("--redis", default="127.0.0.1:6379",
                        help="host:port, or a URL redis://[user:password@]host:port[/db] (default: %(default)s)")
    parser.add_argument("--prefix", default="ws-hub:", help="the hub's redis.channelPrefix (default: %(default)s)")
    parser.add_argument("--groups", default="all",
                        help="comma-separated groups every client joins (default: %(default)s)")
    parser.add_argument("--key-group", action="append", dest="key_groups", metavar="TEMPLATE",
                        help="a per-client group, {key} is the client's key; repeatable (default: user-{key})")
    args = parser.parse_args(argv)
    if args.key_groups is None:
        args.key_groups = ["user-{key}"]
    args.key_groups = [t for t in args.key_groups if t]
    return args


def redis_client(address: str) -> aredis.Redis:
    if "://" in address:
        return aredis.Redis.from_url(address)
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = address, "6379"
    return aredis.Redis(host=host.strip("[]") or "127.0.0.1", port=int(port))


def groups_for(key: str, fixed: list[str], templates: list[str]) -> list[str]:
    """The groups of one client; keep the order, drop duplicates and empty names."""
    out: list[str] = []
    for group in [*fixed, *(t.replace("{key}", key) for t in templates)]:
        if group and group not in out:
            out.append(group)
    return out


def say(line: str) -> None:
    print(line, flush=True)


async def serve(args: argparse.Namespace) -> None:
    fixed = [g.strip() for g in args.groups.split(",") if g.strip()]
    client_new = f"{args.prefix}client-new"
    client_gone = f"{args.prefix}client-gone"
    r = redis_client(args.redis)
    try:
        while True:
            pubsub = r.pubsub()
            try:
                await pubsub.subscribe(client_new, client_gone)
                async for message in pubsub.listen():
                    kind, channel = message["type"], message["channel"].decode()
                    if kind == "subscribe":
                        if message["data"] == 2:  # both confirmed: nothing announced from now on is missed
                            say("ready")
                        continue
                    if kind != "message":
                        continue
                    key = message["data"].decode("utf-8", "replace")
                    if channel == client_new:
                        groups = groups_for(key, fixed, args.key_groups)
                        await r.publish(f"{args.prefix}groups-new:{key}", json.dumps(groups))
                        say(f"new {key} -> {','.join(groups)}")
                    else:
                        say(f"gone {key}")
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # Pub/sub stores nothing: clients announced while we are away get no answer
                # (the hub's webSocket.groupsTimeout can close them), so come back quickly.
                say(f"redis unavailable ({exc}); retrying")
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
    finally:
        await r.aclose()


async def main_async(args: argparse.Namespace) -> int:
    task = asyncio.ensure_future(serve(args))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        say("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
