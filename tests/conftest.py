from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from helpers import SHELLS, RedisProcess

_counter = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One redis-server for the session; tests isolate by channel prefix."""
    server = RedisProcess()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server this test alone may kill, pause or restart."""
    server = RedisProcess()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"t{next(_counter)}-{request.node.name[:40]}:"


@pytest.fixture
def redis_port(request: pytest.FixtureRequest, broker: str) -> int:
    """For a test parametrised over ``broker``: the session's redis-server on Redis, none at all on memory (0)."""
    if broker == "redis":
        server: RedisProcess = request.getfixturevalue("redis_server")
        return server.port
    return 0


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest) -> str:
    """The shell a shell-exercising test runs on: every such test runs once on asyncio and once on trio."""
    name: str = request.param
    return name
