from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from helpers import RedisProcess

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
