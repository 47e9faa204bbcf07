"""Reference peer for side-by-side benchmarks: the WS-Hub protocol on ``websockets`` + ``redis.asyncio``.

This is the design WS-Hub is measured against: what a competent engineer writes
with the two standard libraries. One handler task per WebSocket connection
(the idiomatic ``websockets`` design), one ``redis.asyncio`` PubSub connection
read by one task, ``websockets.broadcast`` for group messages (no per-member
``await``), and a small connection pool for the client messages' PUBLISHes.

Protocol (same as WS-Hub, see docs/protocol.md):
1. ``GET PATH?KEYPARAM=KEY`` upgrades; the peer SUBSCRIBEs ``PREFIXgroups-new:KEY``
   and, once Redis confirms it, PUBLISHes KEY on ``PREFIXclient-new``.
2. An answer on ``groups-new:KEY`` (JSON array or comma list) replaces the key's groups.
3. ``PREFIXgroup-data:G`` is broadcast to G's members (text if valid UTF-8, else binary).
4. Client messages are PUBLISHed to ``PREFIXclient-data:KEY``; when a key's last
   connection closes, KEY is PUBLISHed on ``PREFIXclient-gone``.

usage: python bench/peer_websockets.py --address 127.0.0.1:8081 --redis 127.0.0.1:6379 --prefix ws-hub:
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aredis
from redis.asyncio.client import PubSub
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from wshub_core import parse_groups  # the payload format is the protocol's, not part of the comparison

log = logging.getLogger("peer")


class Peer:
    def __init__(self, *, redis_url: str, prefix: str, key_param: str, path: str) -> None:
        self.prefix = prefix
        self.key_param = key_param
        self.path = path
        self.redis = aredis.Redis(
            connection_pool=aredis.BlockingConnectionPool.from_url(redis_url, max_connections=16)
        )
        self.pubsub: PubSub = self.redis.pubsub()
        self.reader: asyncio.Task[None] | None = None
        self.group_prefix = f"{prefix}group-data:".encode()
        self.key_prefix = f"{prefix}groups-new:".encode()
        self.members: dict[bytes, set[ServerConnection]] = {}  # group-data channel -> connections
        self.key_conns: dict[bytes, set[ServerConnection]] = {}  # groups-new channel -> connections
        self.groups_of: dict[ServerConnection, set[bytes]] = {}
        self.confirmations: dict[bytes, asyncio.Future[None]] = {}
        self.subscribed: set[bytes] = set()

    async def start(self) -> None:
        """Open the subscriber connection before any handler can race to create it."""
        await self.pubsub.connect()  # type: ignore[no-untyped-call]
        self.reader = asyncio.create_task(self.read_pubsub())

    # -- Redis subscriptions ------------------------------------------------------

    async def subscribe(self, *channels: bytes) -> None:
        new = [ch for ch in channels if ch not in self.subscribed]
        if not new:
            return
        self.subscribed.update(new)
        await self.pubsub.subscribe(*new)

    async def unsubscribe(self, *channels: bytes) -> None:
        gone = [ch for ch in channels if ch in self.subscribed]
        if gone:
            self.subscribed.difference_update(gone)
            await self.pubsub.unsubscribe(*gone)

    async def read_pubsub(self) -> None:
        while True:
            message = await self.pubsub.get_message(timeout=None)
            if message is None:
                continue
            channel: bytes = message["channel"]
            if message["type"] == "subscribe":
                future = self.confirmations.pop(channel, None)
                if future is not None and not future.done():
                    future.set_result(None)
            elif message["type"] == "message":
                data: bytes = message["data"]
                conns = self.members.get(channel)
                if conns:
                    try:
                        broadcast(conns, data.decode())
                    except UnicodeDecodeError:
                        broadcast(conns, data)
                elif channel.startswith(self.key_prefix):
                    await self.set_groups(channel, data)

    async def set_groups(self, key_channel: bytes, payload: bytes) -> None:
        groups = parse_groups(payload)
        if groups is None:
            log.warning("ignored groups for %r: %r", key_channel, payload[:100])
            return
        channels = {self.group_prefix + g.encode() for g in groups}
        added: list[bytes] = []
        removed: list[bytes] = []
        for ws in self.key_conns.get(key_channel, ()):
            old = self.groups_of.get(ws, set())
            for ch in channels - old:
                self.members.setdefault(ch, set()).add(ws)
                added.append(ch)
            for ch in old - channels:
                removed.extend(self.leave(ch, ws))
            self.groups_of[ws] = channels
        await self.subscribe(*added)
        await self.unsubscribe(*removed)

    def leave(self, channel: bytes, ws: ServerConnection) -> list[bytes]:
        conns = self.members.get(channel)
        if conns is None:
            return []
        conns.discard(ws)
        if conns:
            return []
        del self.members[channel]
        return [channel]

    # -- WebSocket side -------------------------------------------------------------

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path != self.path:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if not parse_qs(url.query).get(self.key_param):
            return connection.respond(HTTPStatus.BAD_REQUEST, f"missing query parameter {self.key_param}\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        key = parse_qs(urlsplit(ws.request.path).query)[self.key_param][0]
        key_channel = self.key_prefix + key.encode()
        data_channel = f"{self.prefix}client-data:{key}"
        siblings = self.key_conns.setdefault(key_channel, set())
        siblings.add(ws)
        try:
            if key_channel not in self.subscribed:
                confirmed = self.confirmations.setdefault(key_channel, asyncio.get_running_loop().create_future())
                await self.subscribe(key_channel)
                await confirmed
            await self.redis.publish(f"{self.prefix}client-new", key)
            async for message in ws:
                await self.redis.publish(data_channel, message)
        except ConnectionClosed:
            pass
        finally:
            siblings.discard(ws)
            gone = [ch for g in self.groups_of.pop(ws, set()) for ch in self.leave(g, ws)]
            if not siblings:
                del self.key_conns[key_channel]
                gone.append(key_channel)
                await self.redis.publish(f"{self.prefix}client-gone", key)
            await self.unsubscribe(*gone)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:8081", help="host:port to listen on")
    parser.add_argument("--redis", default="127.0.0.1:6379", help="Redis host:port")
    parser.add_argument("--prefix", default="ws-hub:", help="channel prefix")
    parser.add_argument("--client-key", default="session_key")
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--pong-wait", type=float, default=60.0)
    parser.add_argument("--max-message-size", type=int, default=65536)
    parser.add_argument("--compression", action="store_true",
                        help="permessage-deflate as websockets does it: a compressor per connection")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    host, _, port = args.address.rpartition(":")
    peer = Peer(redis_url=f"redis://{args.redis}", prefix=args.prefix, key_param=args.client_key, path=args.path)
    await peer.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with serve(
        peer.handler, host or None, int(port), process_request=peer.process_request,
        compression="deflate" if args.compression else None,
        ping_interval=args.pong_wait * 0.9, ping_timeout=args.pong_wait, max_size=args.max_message_size,
        backlog=4096,
    ):
        log.info("listening on %s", args.address)
        await stop.wait()


if __name__ == "__main__":
    try:  # the same policy as WS-Hub: uvloop when it is installed
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
