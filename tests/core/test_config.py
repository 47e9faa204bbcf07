"""``load_config`` on hostile values: a ConfigError naming the key and the source, nothing else.

The fuzz tests in fuzz/test_fuzz_config.py found these; each is pinned here.
"""

from __future__ import annotations

import math

import pytest

from wshub_core import ConfigError, load_config


def test_nan_seconds_are_refused() -> None:
    """``.nan`` passes ``value < minimum`` (every comparison with NaN is false); a NaN deadline is no deadline."""
    with pytest.raises(ConfigError, match=r"webSocket\.pongWait"):
        load_config("webSocket:\n  pongWait: .nan\n")


def test_nan_from_the_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"WSHUB_REDIS_TIMEOUT"):
        load_config(None, environ={"WSHUB_REDIS_TIMEOUT": ".nan"})


@pytest.mark.parametrize("address", ["redis://[::1", "A://[", "rediss://u:p@[fe80::1/0"])
def test_malformed_ipv6_url_is_a_config_error(address: str) -> None:
    """urllib's ``urlsplit`` raises a bare ValueError("Invalid IPv6 URL")."""
    with pytest.raises(ConfigError, match=r"redis\.address"):
        load_config(f'redis:\n  address: "{address}"\n')


def test_superscript_digit_database_is_a_config_error() -> None:
    """``'²'.isdigit()`` is true but ``int('²')`` raises a bare ValueError."""
    with pytest.raises(ConfigError, match=r"redis\.address"):
        load_config('redis:\n  address: "redis://h:1/\u00b2"\n')


@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_deeply_nested_yaml_is_a_config_error(opener: str) -> None:
    """PyYAML recurses per nesting level: a RecursionError must not escape."""
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        load_config("address: " + opener * 3000)


def test_infinite_seconds_mean_never() -> None:
    """Not an error: an infinite timeout is a valid (if unusual) choice."""
    assert math.isinf(load_config("redis:\n  timeout: .inf\n").redis_timeout)
