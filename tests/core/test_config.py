"""``load_config`` on hostile values: a ConfigError naming the key and the source, nothing else.

The fuzz tests in fuzz/test_fuzz_config.py found these; each is pinned here.
"""

from __future__ import annotations

import math
import re

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


class TestErrorsNameWhereTheValueCameFrom:
    """Issue 8.4: the variable, the file and key, or the default; a check of two keys names both."""

    def test_an_environment_value_is_blamed_on_its_variable_not_the_file(self) -> None:
        with pytest.raises(ConfigError) as err:
            load_config("address: ':0'\n", source="hub.yaml", environ={"WSHUB_CLIENT_KEY": ""})
        assert str(err.value).startswith("clientKey in environment variable WSHUB_CLIENT_KEY: must not be empty")
        assert "hub.yaml" not in str(err.value)

    @pytest.mark.parametrize(("text", "environ", "parts"), [
        ("redis:\n  reconnectMin: 20\n", {},
         ["redis.reconnectMax (default 10.0)", "redis.reconnectMin in hub.yaml"]),
        ("", {"WSHUB_TLS_CERT_FILE": "/c.pem"},
         ["tls.keyFile (default '')", "tls.certFile in environment variable WSHUB_TLS_CERT_FILE"]),
        ("address: ':0'\n", {"WSHUB_WORKERS": "2"},
         ["workers in environment variable WSHUB_WORKERS", "address in hub.yaml"]),
        ("redis:\n  address: h:1\n", {"WSHUB_REDIS_ADDRESS": "h:x"},
         ["redis.address in environment variable WSHUB_REDIS_ADDRESS"]),
        ("", {"WSHUB_REDIS_ADDRESS": "redis://h/x"}, ["redis.address in environment variable WSHUB_REDIS_ADDRESS"]),
        ("", {"WSHUB_ADDRESS": "h:99999"}, ["address in environment variable WSHUB_ADDRESS"]),
    ], ids=["reconnectMax default vs file", "tls key default vs env", "workers env vs address file",
            "redis port from env", "redis db from env", "address from env"])
    def test_derived_checks_name_each_origin(self, text: str, environ: dict[str, str], parts: list[str]) -> None:
        with pytest.raises(ConfigError) as err:
            load_config(text, source="hub.yaml", environ=environ)
        for part in parts:
            assert part in str(err.value), err.value

    def test_the_origin_of_every_key_is_kept_for_errors_found_later(self) -> None:
        """The shell loads the TLS files; its error needs to know where their names came from."""
        config = load_config("tls:\n  keyFile: k.pem\n", source="hub.yaml", environ={"WSHUB_TLS_CERT_FILE": "c.pem"})
        assert config.where("tls.certFile") == "tls.certFile in environment variable WSHUB_TLS_CERT_FILE"
        assert config.where("tls.keyFile") == "tls.keyFile in hub.yaml"
        assert config.where("workers") == "workers (default 1)"

    @pytest.mark.parametrize(("environ", "json_logs"), [
        ({}, True), ({"WSHUB_LOG_FORMAT": "text"}, False), ({"WSHUB_LOG_FORMAT": "json", "WSHUB_X": "1"}, True),
    ])
    def test_the_error_says_whether_json_logs_were_asked_for(self, environ: dict[str, str], json_logs: bool) -> None:
        """Item 12: the shell prints a bad-config error as a JSON line when the config asks for JSON logs."""
        with pytest.raises(ConfigError) as err:
            load_config("logFormat: json\nclientKey: ''\n", environ=environ)
        assert err.value.json_logs is json_logs


class TestTheFileAndTheEnvironmentAlike:
    """Issue 8.11: the same value means the same thing, and the same mistake is the same error."""

    def test_a_section_that_is_not_a_mapping_says_so(self) -> None:
        with pytest.raises(ConfigError, match=r"^webSocket in c\.yaml: must be a mapping"):
            load_config("webSocket: 5\n", source="c.yaml")

    def test_an_empty_section_is_no_section(self) -> None:
        """``tls:`` with every key commented out is null in YAML; it sets nothing."""
        assert load_config("tls:\nwebSocket:\n  pongWait: 5\n") == load_config("webSocket:\n  pongWait: 5\n")

    @pytest.mark.parametrize(("text", "value"), [("1e6", 1_000_000), ("1.5e3", 1500), ("2E+3", 2000), ("1_000", 1000),
                                                 ("0x10", 16), ("3.0", 3)])
    def test_numbers_read_the_same_from_the_file_and_the_environment(self, text: str, value: int) -> None:
        from_file = load_config(f"redis:\n  maxBufferedBytes: {text}\n").max_buffered_bytes
        from_env = load_config(None, environ={"WSHUB_REDIS_MAX_BUFFERED_BYTES": text}).max_buffered_bytes
        assert from_file == from_env == value

    @pytest.mark.parametrize("text", ["1.5e0", "1e400", "inf", "soon", "'7'"])
    def test_a_number_refused_in_one_is_refused_in_the_other(self, text: str) -> None:
        with pytest.raises(ConfigError, match=r"maxConnections in c\.yaml"):
            load_config(f"webSocket:\n  maxConnections: {text}\n", source="c.yaml")
        with pytest.raises(ConfigError, match="WSHUB_WEBSOCKET_MAX_CONNECTIONS"):
            load_config(None, environ={"WSHUB_WEBSOCKET_MAX_CONNECTIONS": text})

    @pytest.mark.parametrize("text", ["=", "<<", "~", "yes", "2001-01-01"])
    def test_a_variable_yaml_reads_as_no_number_is_not_a_number(self, text: str) -> None:
        """``=`` and ``<<`` have YAML tags without a constructor: found by the fuzzer."""
        with pytest.raises(ConfigError, match=rf"WSHUB_WORKERS: expected a number, got {re.escape(repr(text))}"):
            load_config(None, environ={"WSHUB_WORKERS": text})

    @pytest.mark.parametrize(("text", "key", "line", "first"), [
        ("address: ':1'\nredis:\n  db: 1\n  db: 2\n", "db", 4, 3),
        ("redis:\n  db: 1\nworkers: 1\nredis:\n  db: 2\n", "redis", 4, 1),
    ], ids=["in a section", "a whole section"])
    def test_a_key_given_twice_is_an_error_naming_it_and_its_lines(self, text: str, key: str, line: int,
                                                                   first: int) -> None:
        with pytest.raises(ConfigError, match=rf"^c\.yaml line {line}: duplicate key '{key}' "
                                              rf"\(first set on line {first}\)"):
            load_config(text, source="c.yaml")

    def test_a_merge_key_is_not_a_duplicate(self) -> None:
        """YAML's ``<<`` lets a key of the mapping override a merged one: that is not a key given twice."""
        config = load_config("webSocket:\n  <<: {pongWait: 5, writeWait: 3}\n  pongWait: 7\n")
        assert (config.pong_wait, config.write_wait) == (7, 3)

    def test_an_unknown_wshub_variable_is_an_error_naming_it(self) -> None:
        with pytest.raises(ConfigError, match=r"^environment variable WSHUB_WEBSOCKET_PONGWAIT: unknown.*"
                                              r"did you mean WSHUB_WEBSOCKET_PONG_WAIT\?"):
            load_config(None, environ={"WSHUB_WEBSOCKET_PONGWAIT": "5"})
        # Other variables are not the hub's business.
        assert load_config(None, environ={"PATH": "/bin", "wshub_pong_wait": "x", "XWSHUB_A": "1"}) == load_config(None)


class TestBrokerChoice:
    """``broker`` unset: Redis exactly when some redis.* key is set, so a Go hub's file keeps meaning Redis."""

    def test_nothing_about_redis_means_the_memory_broker(self) -> None:
        config = load_config(None, environ={})
        assert config.broker == "memory"
        assert config.where("broker") == "broker (default 'memory': no redis.* key is set)"

    @pytest.mark.parametrize(("text", "environ", "named"), [
        ('redis:\n  address: "10.0.0.1:6379"\n', {}, "redis.address in hub.yaml"),
        ('redis:\n  channelPrefix: "app:"\n', {}, "redis.channelPrefix in hub.yaml"),
        (None, {"WSHUB_REDIS_ADDRESS": "redis://r:6379"}, "redis.address in environment variable WSHUB_REDIS_ADDRESS"),
    ])
    def test_any_redis_key_means_redis_and_says_which(self, text: str | None, environ: dict[str, str],
                                                      named: str) -> None:
        config = load_config(text, source="hub.yaml", environ=environ)
        assert config.broker == "redis"
        assert config.where("broker") == f"broker (default 'redis', because {named} is set)"

    def test_an_explicit_broker_wins(self) -> None:
        assert load_config('broker: memory\nredis:\n  address: "r:6379"\n').broker == "memory"
        assert load_config(None, environ={"WSHUB_BROKER": "redis"}).broker == "redis"

    def test_an_unknown_broker_is_named(self) -> None:
        message = r"^broker in environment variable WSHUB_BROKER: must be 'memory' or 'redis'"
        with pytest.raises(ConfigError, match=message):
            load_config(None, environ={"WSHUB_BROKER": "kafka"})

    def test_workers_with_the_memory_broker_name_both_keys(self) -> None:
        with pytest.raises(ConfigError) as info:
            load_config("workers: 2\naddress: ':8080'\n", source="hub.yaml")
        assert str(info.value).startswith(
            "workers in hub.yaml: must be 1 with broker (default 'memory': no redis.* key is set): "
            "each worker would be an island")
        assert load_config("workers: 2\nbroker: redis\n").workers == 2

    def test_the_api_key_is_hidden_from_check_config(self) -> None:
        config = load_config(None, environ={"WSHUB_API_KEY": "s3cret-api"})
        assert config.api_key == "s3cret-api"
        assert "api.key" in config.hidden_keys()
        assert config.as_dict()["api"]["key"] == "***"


class TestSentinelMode:
    """Issue 10: ``redis.mode``, the sentinels in ``redis.address``, ``redis.masterName``, the probe's interval."""

    SENTINEL = "redis:\n  mode: sentinel\n  masterName: mymaster\n"

    def test_standalone_is_the_default_and_probes_every_5s(self) -> None:
        config = load_config(None)
        assert (config.redis_mode, config.redis_sentinels, config.redis_probe_interval) == ("standalone", (), 5.0)

    @pytest.mark.parametrize(("address", "sentinels", "tls"), [
        ('["a:1", "b"]', (("a", 1), ("b", 26379)), False),
        ('"a:1, b:2,c"', (("a", 1), ("b", 2), ("c", 26379)), False),
        ('["[::1]:26380"]', (("::1", 26380),), False),
        ('"rediss://a:1,rediss://b"', (("a", 1), ("b", 26379)), True),
    ])
    def test_the_sentinels_as_a_list_or_a_comma_separated_string(self, address: str,
                                                                  sentinels: tuple[tuple[str, int], ...],
                                                                  tls: bool) -> None:
        config = load_config(self.SENTINEL + f"  address: {address}\n")
        assert (config.redis_sentinels, config.redis_tls) == (sentinels, tls)

    def test_from_the_environment(self) -> None:
        config = load_config(None, environ={"WSHUB_REDIS_MODE": "sentinel", "WSHUB_REDIS_MASTER_NAME": "m",
                                            "WSHUB_REDIS_ADDRESS": "s1,s2:1"})
        assert config.redis_sentinels == (("s1", 26379), ("s2", 1)) and config.redis_master_name == "m"

    @pytest.mark.parametrize(("text", "message"), [
        ("redis:\n  mode: replicas\n", r"redis\.mode in config\.yaml: must be 'standalone', 'sentinel' or 'cluster'"),
        ("redis:\n  mode: sentinel\n", r"redis\.masterName \(default ''\): must be set with redis\.mode in"),
        ("redis:\n  address: a:1,b:2\n", r"redis\.address in config\.yaml: more than one address"),
        ("redis:\n  address: [a, b]\n", r"redis\.address in config\.yaml: more than one address"),
        (SENTINEL + "  address: []\n", r"redis\.address in config\.yaml: expected a string or a list"),
        (SENTINEL + "  address: [1, 2]\n", r"redis\.address in config\.yaml: expected a string or a list"),
        (SENTINEL + "  address: 'a,,b'\n", r"an empty sentinel address"),
        (SENTINEL + "  address: 'redis://:pw@a:1'\n", r"its password is redis\.sentinelPassword"),
        (SENTINEL + "  address: 'redis://a:1,rediss://b:2'\n", r"not a mix"),
        (SENTINEL + "  address: 'http://a:1'\n", r"URL scheme must be redis:// or rediss://"),
        (SENTINEL + "  address: 'a:port'\n", r"port must be a number"),
        ("redis:\n  probeInterval: -1\n", r"redis\.probeInterval in config\.yaml: must be at least 0"),
    ])
    def test_errors_name_the_key_and_its_source(self, text: str, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            load_config(text)

    def test_cluster_mode_takes_seed_nodes(self) -> None:
        config = load_config("redis:\n  mode: cluster\n  address: [a, 'b:7001']\n")
        assert (config.redis_seeds, config.redis_pubsub, config.redis_host) == (
            (("a", 6379), ("b", 7001)), "sharded", "a")
        config = load_config(None, environ={"WSHUB_REDIS_MODE": "cluster", "WSHUB_REDIS_ADDRESS": "rediss://c:1",
                                            "WSHUB_REDIS_PUBSUB": "classic"})
        assert (config.redis_seeds, config.redis_tls, config.redis_pubsub) == ((("c", 1),), True, "classic")

    @pytest.mark.parametrize(("text", "message"), [
        ("redis:\n  mode: cluster\n  pubsub: both\n",
         r"redis\.pubsub in config\.yaml: must be 'sharded' or 'classic', got 'both'"),
        ("redis:\n  mode: cluster\n  db: 2\n", r"redis\.db in config\.yaml: must be 0 with redis\.mode"),
        ("redis:\n  mode: cluster\n  address: 'a,,b'\n", r"an empty cluster seed node address"),
        ("redis:\n  mode: cluster\n  address: 'redis://:pw@a:1'\n", r"the password is redis\.password"),
    ])
    def test_cluster_errors_name_the_key_and_its_source(self, text: str, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            load_config(text)

    def test_a_list_of_one_is_a_standalone_address(self) -> None:
        assert load_config("redis:\n  address: [h:7000]\n").redis_port == 7000

    def test_the_sentinel_password_is_hidden(self) -> None:
        config = load_config(self.SENTINEL + "  address: a\n  sentinelPassword: s3\n")
        assert config.as_dict()["redis"]["sentinelPassword"] == "***"
        assert "redis.sentinelPassword" in config.hidden_keys()


class TestAuthAndLimitKeys:
    """auth.jwt.* and the rate limits: nested sections, secrets hidden, contradictions named with both sources."""

    SECRET = "x" * 32

    def test_a_nested_section_loads_and_its_secret_is_hidden(self) -> None:
        config = load_config(f"auth:\n  jwt:\n    secret: {self.SECRET}\n    audience: hub\n")
        assert (config.jwt_secret, config.jwt_audience) == (self.SECRET, "hub")
        assert config.as_dict()["auth"]["jwt"]["secret"] == "***"
        assert "auth.jwt.secret" in config.hidden_keys()

    def test_an_unknown_key_inside_the_nested_section_is_named(self) -> None:
        with pytest.raises(ConfigError,
                           match=r"auth.jwt.secrt in config.yaml: unknown key \(did you mean auth.jwt.secret\?\)"):
            load_config("auth:\n  jwt:\n    secrt: x\n")

    def test_a_short_secret_is_refused(self) -> None:
        with pytest.raises(ConfigError, match=r"auth.jwt.secret in environment variable WSHUB_AUTH_JWT_SECRET: "
                                              r"5 bytes; an HS256 secret must be at least 32"):
            load_config(None, environ={"WSHUB_AUTH_JWT_SECRET": "short"})

    def test_a_secret_and_a_public_key_together_are_refused(self) -> None:
        with pytest.raises(ConfigError, match=r"auth.jwt.publicKey in config.yaml: set, but so is auth.jwt.secret in "
                                              r"environment variable WSHUB_AUTH_JWT_SECRET"):
            load_config("auth:\n  jwt:\n    publicKey: /k.pem\n", environ={"WSHUB_AUTH_JWT_SECRET": self.SECRET})

    def test_a_previous_secret_needs_a_current_one(self) -> None:
        with pytest.raises(ConfigError, match=r"auth.jwt.previousSecret in config.yaml: set, but auth.jwt.secret "
                                              r"\(default ''\) is empty"):
            load_config(f"auth:\n  jwt:\n    previousSecret: {self.SECRET}\n")

    def test_a_byte_rate_below_the_largest_message_is_refused(self) -> None:
        with pytest.raises(ConfigError, match=r"webSocket.maxBytesPerSecond in config.yaml: must be at least "
                                              r"webSocket.maxMessageSize \(default 65536\)"):
            load_config("webSocket:\n  maxBytesPerSecond: 1000\n")

    def test_a_message_rate_may_be_fractional(self) -> None:
        assert load_config(None, environ={"WSHUB_WEBSOCKET_MAX_MESSAGES_PER_SECOND": "0.5"}).max_messages_per_second \
            == 0.5
