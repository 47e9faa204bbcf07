"""Checks a running WS-Hub container as a user would; .ci/image starts the containers and calls this.

The hub container and the example listener container run with --network host
next to a redis-server of .ci/image's own. In order:

1. the image's own HEALTHCHECK passes (podman runs it; its status turns healthy);
2. GET /readyz answers 200;
3. a WebSocket client's key reaches Redis on client-new, the listener container
   answers its groups, and a message PUBLISHed to one of them reaches the client;
   what the client sends reaches Redis on client-data:KEY;
4. `podman stop` (SIGTERM) closes the client with 1001, the hub publishes
   client-gone, and the container exits with status 0;
5. a second hub container with no Redis at all (the repository's config.yaml:
   the memory broker) is ready, and the HTTP API reaches a WebSocket client:
   a message to its key, its groups, a message to one of them; it stops with 0.

Every wait has a deadline; none is a sleep that guesses. Exit status 0 when all
pass, 1 with the reason (and the containers' logs) otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import redis.asyncio as aredis
import websockets

PREFIX = "ws-hub:"  # the image's default channel prefix (the mounted config.yaml says the same)
KEY = "ci-alice"


class CheckFailed(Exception):
    pass


class Checker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.podman = shlex.split(args.podman)
        self.hub = args.hub_container
        self.listener = args.listener_container
        self.base = f"http://127.0.0.1:{args.hub_port}"
        self.ws_url = f"ws://127.0.0.1:{args.hub_port}/ws?session_key={KEY}"
        self.redis = aredis.Redis(host="127.0.0.1", port=args.redis_port)
        self.memory_hub = args.memory_hub_container
        self.memory_base = f"http://127.0.0.1:{args.memory_hub_port}"
        self.api_key = args.api_key

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.podman, *argv], capture_output=True, text=True, check=check, timeout=60)

    def inspect(self, container: str, fmt: str) -> str:
        return self.run("inspect", "--format", fmt, container).stdout.strip()

    def running(self, container: str) -> bool:
        return self.inspect(container, "{{.State.Running}}") == "true"

    async def poll(self, what: str, probe: Callable[[], bool], timeout: float, every: float = 0.2) -> None:
        """Until probe() is true; a container that stopped fails at once."""
        deadline = time.monotonic() + timeout
        while not probe():
            for c in self.watched:
                if not self.running(c):
                    raise CheckFailed(f"{what}: container {c} is not running")
            if time.monotonic() > deadline:
                raise CheckFailed(f"{what}: not within {timeout} s")
            await asyncio.sleep(every)  # a process in another container: nothing to await but its answer

    # -- 1. the image's health check ---------------------------------------------------------------------

    async def health(self) -> None:
        if "healthz" not in self.inspect(self.hub, "{{json .Config.Healthcheck}}"):
            raise CheckFailed("the container has no HEALTHCHECK on /healthz (built without --format docker?)")

        def healthy() -> bool:
            # podman runs health checks from systemd timers, which CI does not have: run it as the timer would
            self.run("healthcheck", "run", self.hub, check=False)
            status = self.inspect(self.hub, "{{.State.Health.Status}}")
            return status == "healthy"

        await self.poll("health check healthy", healthy, timeout=30, every=0.5)
        print("ok: the image's HEALTHCHECK passes (status healthy)")

    # -- 2. readiness --------------------------------------------------------------------------------------

    async def ready(self) -> None:
        def readyz() -> bool:
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=2) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        await self.poll("GET /readyz 200", readyz, timeout=30)
        print("ok: GET /readyz is 200")

    # -- 3. a group message through Redis, and a client message to Redis -------------------------------

    async def messages(self, ws: websockets.ClientConnection, pubsub: aredis.client.PubSub) -> None:
        channel, data = await self.next_message(pubsub, 10)
        if (channel, data) != (f"{PREFIX}client-new", KEY.encode()):
            raise CheckFailed(f"expected {KEY} on client-new, got {data!r} on {channel}")
        print(f"ok: the hub announced {KEY} on {PREFIX}client-new")

        # The listener answers with "all" and "user-KEY"; once the hub has subscribed the group, publish.
        group = f"{PREFIX}group-data:user-{KEY}"
        deadline = time.monotonic() + 10
        while (await self.redis.pubsub_numsub(group))[0][1] < 1:
            if time.monotonic() > deadline:
                raise CheckFailed(f"the hub did not subscribe {group}: did the listener container answer?")
            await asyncio.sleep(0.05)
        receivers = await self.redis.publish(group, "hello from redis")
        got = await asyncio.wait_for(ws.recv(), 10)
        if got != "hello from redis":
            raise CheckFailed(f"the client got {got!r}, expected the group message")
        print(f"ok: a message PUBLISHed to {group} ({receivers} subscriber) reached the WebSocket client")

        await ws.send("hello from the client")
        channel, data = await self.next_message(pubsub, 10)
        if (channel, data) != (f"{PREFIX}client-data:{KEY}", b"hello from the client"):
            raise CheckFailed(f"expected the client's message on client-data:{KEY}, got {data!r} on {channel}")
        print(f"ok: the client's message reached Redis on {PREFIX}client-data:{KEY}")

    @staticmethod
    async def next_message(pubsub: aredis.client.PubSub, timeout: float) -> tuple[str, bytes]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if msg is not None:
                return msg["channel"].decode(), msg["data"]
        raise CheckFailed(f"no message on Redis within {timeout} s")

    # -- 4. SIGTERM --------------------------------------------------------------------------------------

    async def stop(self, ws: websockets.ClientConnection, pubsub: aredis.client.PubSub) -> None:
        started = time.monotonic()
        stop = await asyncio.create_subprocess_exec(*self.podman, "stop", "--time", "20", self.hub,
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await asyncio.wait_for(ws.wait_closed(), 15)
        except TimeoutError:
            raise CheckFailed("the client was not closed within 15 s of SIGTERM") from None
        code = ws.close_code
        _, err = await asyncio.wait_for(stop.communicate(), 30)
        if stop.returncode != 0:
            raise CheckFailed(f"podman stop failed: {err.decode().strip()}")
        if code != 1001:
            raise CheckFailed(f"the client was closed with {code} ({ws.close_reason!r}) on SIGTERM, expected 1001")
        print(f"ok: SIGTERM closed the client with 1001 ({ws.close_reason!r})")
        channel, data = await self.next_message(pubsub, 10)
        if (channel, data) != (f"{PREFIX}client-gone", KEY.encode()):
            raise CheckFailed(f"expected {KEY} on client-gone, got {data!r} on {channel}")
        print(f"ok: the hub published {KEY} on {PREFIX}client-gone on its way out")
        status = self.inspect(self.hub, "{{.State.ExitCode}}")
        if status != "0":
            raise CheckFailed(f"the container exited with status {status} after SIGTERM, expected 0")
        print(f"ok: the container exited with status 0, {time.monotonic() - started:.1f} s after SIGTERM")

    # -- 5. no Redis: the memory broker and the HTTP API ------------------------------------------------

    def api(self, method: str, path: str, body: bytes) -> int:
        request = urllib.request.Request(self.memory_base + path, data=body, method=method,
                                         headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)

    async def memory(self) -> None:
        self.watched = (self.memory_hub,)
        base, self.base = self.base, self.memory_base
        await self.ready()
        self.base = base
        logs = self.run("logs", self.memory_hub).stderr
        if "memory broker (in this process)" not in logs:
            raise CheckFailed(f"the hub without Redis did not say it runs on the memory broker: {logs!r}")
        url = self.memory_base.replace("http://", "ws://") + f"/ws?session_key={KEY}"
        async with websockets.connect(url, open_timeout=10) as ws:
            for method, path, body, want in (
                    ("POST", f"/api/keys/{KEY}", b"hello from the API", "hello from the API"),
                    ("PUT", f"/api/keys/{KEY}/groups", b'["news"]', None),
                    ("POST", "/api/groups/news", b"news from the API", "news from the API")):
                status = await asyncio.to_thread(self.api, method, path, body)
                if status != 200:
                    raise CheckFailed(f"{method} {path} answered {status}, expected 200")
                if want is not None and (got := await asyncio.wait_for(ws.recv(), 10)) != want:
                    raise CheckFailed(f"after {method} {path} the client got {got!r}, expected {want!r}")
            print("ok: without Redis (memory broker) the HTTP API reached the WebSocket client: "
                  "a key's message, its groups, a group message")
        stop = self.run("stop", "--time", "20", self.memory_hub)
        if stop.returncode != 0 or self.inspect(self.memory_hub, "{{.State.ExitCode}}") != "0":
            raise CheckFailed(f"the memory-broker hub did not stop with status 0: {stop.stderr.strip()}")
        print("ok: the memory-broker hub stopped with status 0")

    async def main(self) -> None:
        self.watched = (self.hub, self.listener)
        await self.health()
        await self.ready()

        def listener_ready() -> bool:
            return "ready" in self.run("logs", self.listener).stdout.splitlines()

        await self.poll("the listener container subscribed", listener_ready, timeout=30)
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(f"{PREFIX}client-new", f"{PREFIX}client-data:{KEY}", f"{PREFIX}client-gone")
        for _ in range(3):  # the three subscribe confirmations
            if await pubsub.get_message(timeout=5) is None:
                raise CheckFailed("Redis did not confirm our subscriptions")
        async with websockets.connect(self.ws_url, open_timeout=10) as ws:
            await self.messages(ws, pubsub)
            await self.stop(ws, pubsub)
        await pubsub.aclose()
        await self.redis.aclose()
        await self.memory()

    def logs(self) -> None:
        for c in (self.hub, self.listener, self.memory_hub):
            out = self.run("logs", c, check=False)
            print(f"--- logs of {c} ---\n{out.stdout}{out.stderr}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--podman", default="podman --runtime runc", help="the podman command (default: %(default)s)")
    parser.add_argument("--hub-container", required=True)
    parser.add_argument("--listener-container", required=True)
    parser.add_argument("--hub-port", type=int, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--memory-hub-container", required=True, help="a hub container started without Redis")
    parser.add_argument("--memory-hub-port", type=int, required=True)
    parser.add_argument("--api-key", required=True, help="the memory-broker hub's WSHUB_API_KEY")
    checker = Checker(parser.parse_args())
    try:
        asyncio.run(checker.main())
    except (CheckFailed, OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        checker.logs()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
