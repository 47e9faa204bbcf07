"""Checks docker-compose.yml as its header and the README say to use it; .ci/image brings it up and calls this.

1. the hub answers GET /readyz 200 on the published port (Redis and the hub up, in their containers);
2. a WebSocket client connects, the listener container gives it its groups, and the README's command
   ``compose exec redis redis-cli PUBLISH ws-hub:group-data:all hello`` reaches it;
3. ``compose stop hub`` (SIGTERM) closes the client with 1001 and the container exits 0.

Every wait has a deadline. Exit status 0 when all pass, 1 with the reason otherwise.
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

import websockets

KEY = "ci-compose"


class CheckFailed(Exception):
    pass


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


async def check(compose: list[str], podman: list[str], port: int, hub_container: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise CheckFailed("GET /readyz did not answer 200 within 60 s")
        await asyncio.sleep(0.5)  # containers starting: nothing to await but their answer
    print("ok: compose: GET /readyz is 200")
    deadline = time.monotonic() + 60
    while "ready" not in run([*compose, "logs", "listener"]).stdout:  # pub/sub keeps nothing for late listeners
        if time.monotonic() > deadline:
            raise CheckFailed("the listener container did not print ready within 60 s")
        await asyncio.sleep(0.5)
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws?session_key={KEY}", open_timeout=10) as ws:
        deadline = time.monotonic() + 20
        numsub = [*compose, "exec", "-T", "redis", "redis-cli", "PUBSUB", "NUMSUB", "ws-hub:group-data:all"]
        while run(numsub).stdout.split()[-1:] != ["1"]:
            if time.monotonic() > deadline:
                raise CheckFailed("the hub did not subscribe group-data:all: did the listener container answer? "
                                  f"({run(numsub)!r})")
            await asyncio.sleep(0.2)
        publish = run([*compose, "exec", "-T", "redis", "redis-cli", "PUBLISH", "ws-hub:group-data:all", "hello"])
        if publish.returncode != 0:
            raise CheckFailed(f"compose exec redis redis-cli PUBLISH failed: {publish.stderr.strip()}")
        got = await asyncio.wait_for(ws.recv(), 10)
        if got != "hello":
            raise CheckFailed(f"the client got {got!r}, expected hello")
        print("ok: compose: the README's redis-cli PUBLISH reached a WebSocket client (the listener gave its groups)")
        stop = await asyncio.create_subprocess_exec(*compose, "stop", "hub", stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.PIPE)
        try:
            await asyncio.wait_for(ws.wait_closed(), 20)
        except TimeoutError:
            raise CheckFailed("the client was not closed within 20 s of compose stop") from None
        await asyncio.wait_for(stop.communicate(), 60)
        if ws.close_code != 1001:
            raise CheckFailed(f"compose stop closed the client with {ws.close_code}, expected 1001")
    status = run([*podman, "inspect", "--format", "{{.State.ExitCode}}", hub_container]).stdout.strip()
    if status != "0":
        raise CheckFailed(f"the hub container exited with {status!r} after compose stop, expected 0")
    print("ok: compose: stop closed the client with 1001 and the hub exited 0")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compose", required=True, help="the compose command, e.g. 'podman-compose -p NAME'")
    parser.add_argument("--podman", default="podman --runtime runc")
    parser.add_argument("--hub-port", type=int, required=True)
    parser.add_argument("--hub-container", required=True)
    args = parser.parse_args()
    compose = shlex.split(args.compose)
    try:
        asyncio.run(check(compose, shlex.split(args.podman), args.hub_port, args.hub_container))
    except (CheckFailed, OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
        print(f"FAILED: compose: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(run([*compose, "logs"]).stdout[-4000:], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
