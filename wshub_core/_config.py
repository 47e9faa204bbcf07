"""Configuration: parse, validate and override from the environment.

Rules: this module never reads a file or the process environment by itself;
the shell passes the text, the file name and a mapping. Every error names the
key (dotted, as written in YAML) and where its value came from (the
environment variable, the file, or the default), so a user can fix it in one go.
The file and the environment are read by the same rules: a number is a YAML
number either way, and an unknown name is an error either way.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

__all__ = ["ENV_PREFIX", "KEYS", "Config", "ConfigError", "env_name", "load_config"]

ENV_PREFIX = "WSHUB_"


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and the source.

    ``json_logs`` says whether the input asked for JSON logs (``logFormat:
    json`` in the file or the environment), as far as it could be read: the
    shell reports the error itself in that format.
    """

    def __init__(self, message: str, *, json_logs: bool = False) -> None:
        super().__init__(message)
        self.json_logs = json_logs


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, line: int, first_line: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r} (first set on line {first_line})")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where a config file needs it.

    A key given twice is an error (PyYAML keeps the last one silently), and
    ``1e6`` is a number (PyYAML, following YAML 1.1, wants ``1.0e+6``), as it
    is in the environment and in YAML 1.2.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *base" then a key of its own overrides by design
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it
            if first is not key_node:
                raise _DuplicateKey(key, key_node.start_mark.line + 1, first.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Key:
    """One documented config key: where it lives, its type, default and meaning."""

    path: str
    attr: str
    kind: str  # "str", "int", "seconds", "bytes", "number", "list", "bool", "addresses" (a string, or a list)
    default: Any
    doc: str
    minimum: float | None = None


KEYS: tuple[Key, ...] = (
    Key(path="address", attr="address", kind="str", default=":8080",
        doc="host:port the hub listens on; ':8080' means every interface"),
    Key(path="clientKey", attr="client_key", kind="str", default="session_key",
        doc="query parameter that carries the client's key"),
    Key(path="serverUrl", attr="server_url", kind="str", default="/ws",
        doc="path of the WebSocket endpoint"),
    Key(path="workers", attr="workers", kind="int", default=1, minimum=1,
        doc="processes sharing the port (SO_REUSEPORT), each with its own Redis connections"),
    Key(path="shutdownTimeout", attr="shutdown_timeout", kind="seconds", default=10.0,
        minimum=0, doc="on SIGTERM, how long to wait for clients to close and buffered messages to flush"),
    Key(path="logFormat", attr="log_format", kind="str", default="text",
        doc="'text' (human-readable) or 'json' (one JSON object per line)"),
    Key(path="logLevel", attr="log_level", kind="str", default="info",
        doc="'info' (a line per connect, close and groups change), 'warning' (no line per connection: links, "
            "refusals and errors; for many connections), 'error' or 'debug' (as --debug)"),
    Key(path="broker", attr="broker", kind="str", default="",
        doc="'memory' (in this process, nothing else to run; one worker) or 'redis'; when unset: 'redis' "
            "if the file or the environment sets any redis.* key, else 'memory'"),
    Key(path="api.key", attr="api_key", kind="str", default="",
        doc="Bearer token every /api/ request must carry; empty: one is generated at start and logged once"),
    Key(path="api.maxBodySize", attr="api_max_body_size", kind="bytes", default=1024 * 1024, minimum=1,
        doc="largest /api/ request body; larger is answered 413 before it is read"),
    Key(path="auth.jwt.secret", attr="jwt_secret", kind="str", default="",
        doc="HS256 secret: when set, the clientKey value must be a token signed with it; its sub is the key"),
    Key(path="auth.jwt.previousSecret", attr="jwt_previous_secret", kind="str", default="",
        doc="a second HS256 secret also accepted, to rotate auth.jwt.secret without dropping clients"),
    Key(path="auth.jwt.publicKey", attr="jwt_public_key", kind="str", default="",
        doc="PEM file (or the PEM itself) of an RSA (RS256) or EC P-256 (ES256) public key, instead of a secret"),
    Key(path="auth.jwt.audience", attr="jwt_audience", kind="str", default="",
        doc="when set, a token's aud must contain it"),
    Key(path="auth.jwt.issuer", attr="jwt_issuer", kind="str", default="",
        doc="when set, a token's iss must equal it"),
    Key(path="auth.jwt.leeway", attr="jwt_leeway", kind="seconds", default=0.0, minimum=0,
        doc="clock skew allowed when checking exp and nbf"),
    Key(path="presence.enabled", attr="presence", kind="bool", default=False,
        doc="track who is in each group across every hub (GET /api/groups/GROUP/presence, join/leave events)"),
    Key(path="presence.timeout", attr="presence_timeout", kind="seconds", default=30.0, minimum=0.1,
        doc="a hub that stops refreshing (killed) leaves no entry in any answer longer than this"),
    Key(path="presence.grace", attr="presence_grace", kind="seconds", default=5.0, minimum=0,
        doc="a key's last connection in a group leaves only after this long, so a page reload does not flap"),
    Key(path="history.enabled", attr="history", kind="bool", default=True,
        doc="keep each group's recent messages (published with wshub_publish or the HTTP API): hubs repair "
            "gaps after any Redis interruption, clients resume with recover=1"),
    Key(path="history.size", attr="history_size", kind="int", default=1000, minimum=1,
        doc="entries kept per group (at least this many: Redis trims in whole nodes, MAXLEN ~)"),
    Key(path="history.ttl", attr="history_ttl", kind="seconds", default=300.0, minimum=1,
        doc="a group's history is dropped this long after its last message"),
    Key(path="tls.certFile", attr="tls_cert_file", kind="str", default="",
        doc="PEM certificate (chain) for wss://; empty: plain ws://"),
    Key(path="tls.keyFile", attr="tls_key_file", kind="str", default="",
        doc="PEM private key for tls.certFile"),
    Key(path="redis.mode", attr="redis_mode", kind="str", default="standalone",
        doc="'standalone' (redis.address is the server), 'sentinel' (redis.address lists the sentinels, "
            "which name the master of redis.masterName) or 'cluster' (redis.address lists seed nodes of a Redis "
            "Cluster)"),
    Key(path="redis.pubsub", attr="redis_pubsub", kind="str", default="sharded",
        doc="cluster mode: 'sharded' (SSUBSCRIBE/SPUBLISH: each message goes to one shard) or 'classic' "
            "(SUBSCRIBE/PUBLISH: every node receives every message)"),
    Key(path="redis.address", attr="redis_address", kind="addresses", default="localhost:6379",
        doc="standalone: host:port, or a URL redis://[user:password@]host:port[/db] (rediss:// for TLS); "
            "sentinel: the sentinels' host:port (default port 26379), cluster: seed nodes' host:port (default "
            "6379), a YAML list or one string separated by commas"),
    Key(path="redis.masterName", attr="redis_master_name", kind="str", default="",
        doc="sentinel mode: the name the sentinels monitor the master by (required there)"),
    Key(path="redis.sentinelUsername", attr="redis_sentinel_username", kind="str", default="",
        doc="sentinel mode: ACL user for AUTH on the sentinels (empty: none)"),
    Key(path="redis.sentinelPassword", attr="redis_sentinel_password", kind="str", default="",
        doc="sentinel mode: password for AUTH on the sentinels (empty: no AUTH); the master's is redis.password"),
    Key(path="redis.username", attr="redis_username", kind="str", default="",
        doc="ACL user for AUTH (empty: none)"),
    Key(path="redis.password", attr="redis_password", kind="str", default="",
        doc="password for AUTH (empty: no AUTH)"),
    Key(path="redis.db", attr="redis_db", kind="int", default=0, minimum=0,
        doc="database for SELECT on the command connection (pub/sub ignores it)"),
    Key(path="redis.timeout", attr="redis_timeout", kind="seconds", default=120.0, minimum=0.001,
        doc="a Redis connection whose oldest command has waited this long for a reply is dropped and re-dialled"),
    Key(path="redis.idleConn", attr="redis_idle_conn", kind="int", default=4, minimum=0,
        doc="accepted for compatibility with the Go hub; the hub always keeps exactly two connections to Redis "
            "(and one to a sentinel in sentinel mode)"),
    Key(path="redis.channelPrefix", attr="channel_prefix", kind="str", default="ws-hub:",
        doc="prefix of every channel name"),
    Key(path="redis.reconnectMin", attr="reconnect_min", kind="seconds", default=0.1, minimum=0.001,
        doc="first reconnect delay; doubles on each failure, with jitter"),
    Key(path="redis.reconnectMax", attr="reconnect_max", kind="seconds", default=10.0, minimum=0.001,
        doc="upper bound of the reconnect delay"),
    Key(path="redis.probeInterval", attr="redis_probe_interval", kind="seconds", default=5.0, minimum=0,
        doc="every this often the hub publishes a probe to its own subscriber link and drops the link if the probe "
            "has not come back before the next one is due: a stalled link is redialled within 2 x probeInterval "
            "(0: no probe)"),
    Key(path="redis.maxBufferedBytes", attr="max_buffered_bytes", kind="bytes", default=16 * 1024 * 1024,
        minimum=1, doc="client messages held while Redis is slow or down; above it the senders are paused"),
    Key(path="webSocket.writeWait", attr="write_wait", kind="seconds", default=10.0, minimum=0.001,
        doc="a client whose socket cannot drain for this long is closed"),
    Key(path="webSocket.pongWait", attr="pong_wait", kind="seconds", default=60.0, minimum=0.001,
        doc="a client silent (no pong, no data) this long is closed; pings go every 0.9 x pongWait"),
    Key(path="webSocket.maxMessageSize", attr="max_message_size", kind="bytes", default=65536, minimum=1,
        doc="largest message a client may send (bytes, after reassembly); larger closes with 1009"),
    Key(path="webSocket.maxOutboundBuffer", attr="max_outbound_buffer", kind="bytes", default=1024 * 1024,
        minimum=1, doc="bytes queued for a client that is not reading before it is closed (1008)"),
    Key(path="webSocket.handshakeTimeout", attr="handshake_timeout", kind="seconds", default=10.0,
        minimum=0.001, doc="a socket that has not completed its upgrade by then is closed"),
    Key(path="webSocket.groupsTimeout", attr="groups_timeout", kind="seconds", default=0.0, minimum=0,
        doc="close a client the listener has not answered within this time (0: wait forever)"),
    Key(path="webSocket.maxMessagesPerSecond", attr="max_messages_per_second", kind="number", default=0.0,
        minimum=0, doc="messages a client may send per second (a burst of one second's worth); more closes "
                       "with 1008 (0: no limit)"),
    Key(path="webSocket.maxBytesPerSecond", attr="max_bytes_per_second", kind="bytes", default=0, minimum=0,
        doc="message bytes a client may send per second, as maxMessagesPerSecond (0: no limit)"),
    Key(path="webSocket.compression", attr="compression", kind="bool", default=False,
        doc="accept permessage-deflate when a client offers it (a broadcast is compressed once)"),
    Key(path="webSocket.compressionThreshold", attr="compression_threshold", kind="bytes", default=256, minimum=0,
        doc="messages to clients shorter than this go uncompressed"),
    Key(path="webSocket.maxConnections", attr="max_connections", kind="int", default=0, minimum=0,
        doc="open client connections per process; more are answered 503 (0: no limit)"),
    Key(path="webSocket.maxHeaderSize", attr="max_header_size", kind="bytes", default=16384, minimum=256,
        doc="largest HTTP request head; larger is answered 431"),
    Key(path="webSocket.allowedOrigins", attr="allowed_origins", kind="list", default=[],
        doc="Origin values allowed to connect (empty: any); others get 403"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The effective configuration. Attribute names follow ``KEYS``."""

    address: str = ":8080"
    client_key: str = "session_key"
    server_url: str = "/ws"
    workers: int = 1
    shutdown_timeout: float = 10.0
    log_format: str = "text"
    log_level: str = "info"
    broker: str = "redis"  # load_config decides; a Config built by hand keeps the Redis broker it always had
    api_key: str = ""
    api_max_body_size: int = 1024 * 1024
    jwt_secret: str = ""
    jwt_previous_secret: str = ""
    jwt_public_key: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_leeway: float = 0.0
    presence: bool = False
    presence_timeout: float = 30.0
    presence_grace: float = 5.0
    history: bool = True
    history_size: int = 1000
    history_ttl: float = 300.0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    redis_mode: str = "standalone"
    redis_pubsub: str = "sharded"
    redis_address: str = "localhost:6379"
    redis_master_name: str = ""
    redis_sentinel_username: str = ""
    redis_sentinel_password: str = ""
    redis_username: str = ""
    redis_password: str = ""
    redis_db: int = 0
    redis_timeout: float = 120.0
    redis_idle_conn: int = 4
    channel_prefix: str = "ws-hub:"
    reconnect_min: float = 0.1
    reconnect_max: float = 10.0
    redis_probe_interval: float = 5.0
    max_buffered_bytes: int = 16 * 1024 * 1024
    write_wait: float = 10.0
    pong_wait: float = 60.0
    max_message_size: int = 65536
    max_outbound_buffer: int = 1024 * 1024
    handshake_timeout: float = 10.0
    groups_timeout: float = 0.0
    max_messages_per_second: float = 0.0
    max_bytes_per_second: int = 0
    compression: bool = False
    compression_threshold: int = 256
    max_connections: int = 0
    max_header_size: int = 16384
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    # Derived from the above by ``load_config``.
    host: str = ""
    port: int = 8080
    redis_host: str = "localhost"
    redis_port: int = 6379
    redis_tls: bool = False
    redis_sentinels: tuple[tuple[str, int], ...] = ()  # sentinel mode: redis.address, parsed
    redis_seeds: tuple[tuple[str, int], ...] = ()  # cluster mode: redis.address, parsed
    jwt_public_key_pem: str = ""  # auth.jwt.publicKey's PEM: the value itself, or the file's text the shell read
    # Where each key's value came from, by dotted path, for errors found later
    # (a TLS file the shell cannot load). Not part of the value: equal configs
    # from different sources compare equal.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def where(self, path: str) -> str:
        """``tls.certFile in environment variable WSHUB_TLS_CERT_FILE``, ``... in FILE`` or ``... (default)``."""
        return self.origins.get(path, path)

    def hidden_keys(self) -> list[str]:
        """The keys ``as_dict`` masks: a password, also inside a ``redis.address`` URL."""
        out = []
        if self.api_key:
            out.append("api.key")
        if self.redis_password and "@" in self.redis_address and "://" in self.redis_address:
            out.append("redis.address")
        if self.redis_password:
            out.append("redis.password")
        if self.redis_sentinel_password:
            out.append("redis.sentinelPassword")
        out += [path for path, value in (("auth.jwt.secret", self.jwt_secret),
                                         ("auth.jwt.previousSecret", self.jwt_previous_secret)) if value]
        return out

    def as_dict(self) -> dict[str, Any]:
        """The effective config in the YAML layout (for ``--check-config``); ``hidden_keys`` show ``***``."""
        hidden = self.hidden_keys()
        out: dict[str, Any] = {}
        for key in KEYS:
            value = getattr(self, key.attr)
            if isinstance(value, tuple):
                value = list(value)
            if key.path in ("redis.password", "redis.sentinelPassword", "api.key", "auth.jwt.secret",
                            "auth.jwt.previousSecret") and key.path in hidden:
                value = "***"
            elif key.path == "redis.address" and key.path in hidden:
                scheme, _, rest = value.partition("://")
                value = f"{scheme}://***@{rest.rpartition('@')[2]}"  # never print a secret
            node = out
            *parents, leaf = key.path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return out


def env_name(path: str) -> str:
    """``webSocket.pongWait`` -> ``WSHUB_WEBSOCKET_PONG_WAIT``."""
    parts = [re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", p).upper() for p in path.split(".")]
    return ENV_PREFIX + "_".join(parts).replace("WEB_SOCKET", "WEBSOCKET")


ENV_NAMES = {env_name(k.path): k for k in KEYS}
SECTIONS = {k.path.rsplit(".", n)[0] for k in KEYS for n in range(1, k.path.count(".") + 1)}  # auth and auth.jwt


def _lookup(tree: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_names(tree: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Every file key is a documented key, and a section is a mapping (or empty)."""
    known = {k.path for k in KEYS}
    for name, value in tree.items():
        path = f"{prefix}{name}"
        if path in SECTIONS:
            if value is None:
                continue  # "tls:" with every key commented out: the same as no section
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path} in {source}: must be a mapping of keys (a section), got {value!r}")
            _check_names(value, source, path + ".")
        elif path not in known:
            raise ConfigError(f"{path} in {source}: unknown key{_suggest(str(path), sorted(known | SECTIONS))}")


def _check_env_names(env: Mapping[str, str]) -> None:
    """A mistyped variable would be ignored silently; it is as fatal as a mistyped file key."""
    for name in env:
        if name.startswith(ENV_PREFIX) and name not in ENV_NAMES:
            raise ConfigError(f"environment variable {name}: unknown, no config key has this name"
                              f"{_suggest(name, sorted(ENV_NAMES))}; see docs/configuration.md")


def _yaml_number(text: str) -> Any:
    """An environment value read as the file's loader reads a plain scalar: ``1e6``, ``0.5`` and ``30`` alike."""
    text = text.strip()
    loader = _Loader("")
    tag = loader.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        return loader.construct_object(yaml.ScalarNode(tag, text))
    return text  # "=", "<<", "~", "yes": not a number, whatever else YAML makes of them


def _coerce(key: Key, value: Any, where: str, from_env: bool) -> Any:
    shown = value  # errors quote the value as the user wrote it
    if key.kind == "addresses" and isinstance(value, list):  # sentinel mode: a YAML list of addresses
        if not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a string or a list of strings, got {shown!r}")
        return ",".join(value)
    if from_env and key.kind == "list":
        value = [v.strip() for v in value.split(",") if v.strip()]
    elif from_env and key.kind != "str":
        value = _yaml_number(value)
    if key.kind in ("str", "addresses"):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # "address: 8081" is read by YAML as a number
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {shown!r}")
        return value
    if key.kind == "bool":
        if from_env and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {shown!r}")
        return value
    if key.kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {shown!r}")
        return tuple(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {shown!r}")
    if key.kind in ("int", "bytes"):
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected a whole number, got {shown!r}")
        value = int(value)
    else:
        value = float(value)
        if math.isnan(value):  # .inf is allowed: "never"
            raise ConfigError(f"{where}: must be a number, got {shown!r}")
    if key.minimum is not None and value < key.minimum:
        raise ConfigError(f"{where}: must be at least {key.minimum}, got {shown!r}")
    return value


def _split_host_port(text: str, default_port: int, where: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep:  # "8081" is a port, "redis" is a host
        host, port_text = ("", text) if text.isdigit() else (text, str(default_port))
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{where}: port must be a number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: port out of range in {text!r}")
    return host, port


def _parse(text: str | None, source: str) -> Mapping[str, Any]:
    if text is None:
        return {}
    try:
        tree = yaml.load(text, Loader=_Loader) or {}
    except _DuplicateKey as exc:
        raise ConfigError(f"{source} {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a config file") from None
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    return tree


def _asked_for_json(tree: Mapping[str, Any], env: Mapping[str, str]) -> bool:
    name = env_name("logFormat")
    return env[name] == "json" if name in env else tree.get("logFormat") == "json"


def load_config(
    text: str | None,
    *,
    source: str = "config.yaml",
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective config from YAML text (or none) and environment overrides."""
    env = environ or {}
    tree: Mapping[str, Any] = {}
    try:
        tree = _parse(text, source)
        _check_names(tree, source)
        _check_env_names(env)
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for key in KEYS:
            name = env_name(key.path)
            found, value = _lookup(tree, key.path)
            if name in env:
                origins[key.path] = f"{key.path} in environment variable {name}"
                values[key.attr] = _coerce(key, env[name], origins[key.path], True)
            elif found:
                origins[key.path] = f"{key.path} in {source}"
                values[key.attr] = _coerce(key, value, origins[key.path], False)
            else:
                origins[key.path] = f"{key.path} (default {key.default!r})"
                values[key.attr] = tuple(key.default) if key.kind == "list" else key.default
        return _derive(values, origins)
    except ConfigError as exc:
        raise ConfigError(str(exc), json_logs=_asked_for_json(tree, env)) from None


def _derive(values: dict[str, Any], origins: dict[str, str]) -> Config:
    def check(ok: bool, path: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{origins[path]}: {message}")

    host, port = _split_host_port(values["address"], 8080, origins["address"])
    check(values["workers"] == 1 or port != 0, "workers",
          f"more than one worker needs a fixed port, but {origins['address']} is port 0")
    check(values["server_url"].startswith("/"), "serverUrl", "must start with '/'")
    check(bool(values["client_key"]), "clientKey", "must not be empty")
    check(values["log_format"] in ("text", "json"), "logFormat", "must be 'text' or 'json'")
    check(values["log_level"] in ("debug", "info", "warning", "error"), "logLevel",
          f"must be 'debug', 'info', 'warning' or 'error', got {values['log_level']!r}")
    check(values["broker"] in ("", "memory", "redis"), "broker", "must be 'memory' or 'redis'")
    if not values["broker"]:
        # A Go hub's config.yaml names redis.address: it still means Redis. Nothing about Redis: the first run
        # needs nothing installed.
        named = [k.path for k in KEYS if k.path.startswith("redis.") and "(default" not in origins[k.path]]
        values["broker"] = "redis" if named else "memory"
        origins["broker"] = (f"broker (default 'redis', because {origins[named[0]]} is set)" if named
                             else "broker (default 'memory': no redis.* key is set)")
    check(values["broker"] == "redis" or values["workers"] == 1, "workers",
          f"must be 1 with {origins['broker']}: each worker would be an island with its own memory broker; "
          "use broker: redis to share one Redis between workers")
    if bool(values["tls_cert_file"]) != bool(values["tls_key_file"]):
        empty, given = ("tls.keyFile", "tls.certFile") if values["tls_cert_file"] else ("tls.certFile", "tls.keyFile")
        check(False, empty, f"empty, but {origins[given]} is set: tls.certFile and tls.keyFile go together")
    check(not (values["jwt_secret"] and values["jwt_public_key"]), "auth.jwt.publicKey",
          f"set, but so is {origins['auth.jwt.secret']}: a hub verifies with a secret (HS256) or a public key, "
          "not both")
    for path, attr in (("auth.jwt.secret", "jwt_secret"), ("auth.jwt.previousSecret", "jwt_previous_secret")):
        check(not values[attr] or len(values[attr].encode()) >= 32, path,
              f"{len(values[attr].encode())} bytes; an HS256 secret must be at least 32 (RFC 7518 section 3.2)")
    check(not values["jwt_previous_secret"] or bool(values["jwt_secret"]), "auth.jwt.previousSecret",
          f"set, but {origins['auth.jwt.secret']} is empty: the previous secret only adds to the current one")
    check(not values["max_bytes_per_second"] or values["max_bytes_per_second"] >= values["max_message_size"],
          "webSocket.maxBytesPerSecond", f"must be at least {origins['webSocket.maxMessageSize']}, which is "
          f"{values['max_message_size']}: a message that large could never be sent")
    check(values["presence_grace"] < values["presence_timeout"], "presence.grace",
          f"must be less than {origins['presence.timeout']}, which is {values['presence_timeout']!r}")
    check(values["reconnect_max"] >= values["reconnect_min"], "redis.reconnectMax",
          f"must be at least {origins['redis.reconnectMin']}, which is {values['reconnect_min']!r}")
    address = values["redis_address"]
    where = origins["redis.address"]
    tls = False
    mode = values["redis_mode"]
    check(mode in ("standalone", "sentinel", "cluster"), "redis.mode",
          f"must be 'standalone', 'sentinel' or 'cluster', got {mode!r}")
    check(values["redis_pubsub"] in ("sharded", "classic"), "redis.pubsub",
          f"must be 'sharded' or 'classic', got {values['redis_pubsub']!r}")
    check(mode != "standalone" or "," not in address, "redis.address",
          f"more than one address ({address!r}) needs redis.mode: sentinel or cluster")
    sentinels: tuple[tuple[str, int], ...] = ()
    seeds: tuple[tuple[str, int], ...] = ()
    if mode == "cluster":
        check(not values["redis_db"], "redis.db", f"must be 0 with {origins['redis.mode']}: a Cluster has one "
              "database")
        seeds, tls = _node_addresses(address, where, 6379, "cluster seed node")
        redis_host, redis_port = seeds[0]
    elif mode == "sentinel":
        check(bool(values["redis_master_name"]), "redis.masterName",
              f"must be set with {origins['redis.mode']}: the sentinels name the master by it")
        sentinels, tls = _node_addresses(address, where, 26379, "sentinel")
        redis_host, redis_port = sentinels[0]  # the first sentinel: where the shell's start-up line points
    elif "://" in address:
        try:
            url = urlsplit(address)
        except ValueError as exc:
            raise ConfigError(f"{where}: not a URL: {address!r} ({exc})") from None
        check(url.scheme in ("redis", "rediss"), "redis.address", "URL scheme must be redis:// or rediss://")
        tls = url.scheme == "rediss"
        check(bool(url.hostname), "redis.address", "URL has no host")
        try:
            redis_port = url.port or 6379
        except ValueError:
            raise ConfigError(f"{where}: bad port in {address!r}") from None
        redis_host = url.hostname or ""
        if url.username:
            values["redis_username"] = unquote(url.username)
            origins["redis.username"] = where
        if url.password:
            values["redis_password"] = unquote(url.password)
            origins["redis.password"] = where
        db_text = url.path.strip("/")
        if db_text:
            check(db_text.isascii() and db_text.isdigit(), "redis.address",
                  f"database must be a number, got {db_text!r}")
            values["redis_db"] = int(db_text)
            origins["redis.db"] = where
    else:
        redis_host, redis_port = _split_host_port(address, 6379, where)
        check(bool(redis_host), "redis.address", "has no host")
    pem = values["jwt_public_key"] if values["jwt_public_key"].lstrip().startswith("-----BEGIN") else ""
    return Config(
        **values, host=host, port=port, redis_host=redis_host, redis_port=redis_port, redis_tls=tls,
        redis_sentinels=sentinels, redis_seeds=seeds, jwt_public_key_pem=pem, origins=origins,
    )


def _node_addresses(text: str, where: str, default_port: int,
                    what: str) -> tuple[tuple[tuple[str, int], ...], bool]:
    """Sentinel or cluster mode's ``redis.address``: host[:port] or redis:// / rediss:// URLs, comma-separated."""
    out: list[tuple[str, int]] = []
    schemes: set[str] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ConfigError(f"{where}: an empty {what} address in {text!r}")
        scheme, sep, rest = item.partition("://")
        if sep:
            if scheme not in ("redis", "rediss"):
                raise ConfigError(f"{where}: URL scheme must be redis:// or rediss://, got {item!r}")
            if "@" in rest or "/" in rest.rstrip("/"):
                hint = ("its password is redis.sentinelPassword, the master's redis.password" if what == "sentinel"
                        else "the password is redis.password")
                raise ConfigError(f"{where}: a {what} address is host:port; {hint} (got {item!r})")
            schemes.add(scheme)
            item = rest.rstrip("/")
        else:
            schemes.add("redis")
        host, port = _split_host_port(item, default_port, where)
        if not host:
            raise ConfigError(f"{where}: {what} address {item!r} has no host")
        out.append((host, port))
    if len(schemes) > 1:
        raise ConfigError(f"{where}: every {what} must be redis:// or every one rediss://, not a mix")
    return tuple(out), schemes == {"rediss"}


# Every key has a Config attribute and vice versa.
_DERIVED = {"host", "port", "redis_host", "redis_port", "redis_tls", "redis_sentinels", "redis_seeds",
            "jwt_public_key_pem",
            "origins"}
assert {f.name for f in fields(Config)} - _DERIVED == {
    k.attr for k in KEYS
}
