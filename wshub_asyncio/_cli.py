"""The command line every shell shares: arguments, config, logging, the open-file limit, workers, exit codes.

``python -m wshub_asyncio`` and ``python -m wshub_trio`` are the same program
on two event loops, so everything up to "serve this config on a loop" lives
here once, and each shell's ``__main__`` passes only its ``serve``.

Rules:
1. Loop-neutral: nothing here imports or starts an event loop. A shell's
   ``serve`` does that, after the fork when there are workers.
2. Exit status: 0 stopped (or config valid), 1 cannot start, 2 bad config;
   an error is one line on stderr, JSON when the logs are.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import importlib.metadata
import json
import logging
import os
import resource
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from wshub_core import Config, ConfigError, env_name, load_config, token_verifier

from ._logging import set_worker, setup_logging
from ._neutral import reuseport_socket, server_tls_context

__all__ = ["Serve", "check_output", "main", "raise_file_limit", "read_config_file", "read_key_files", "report_error",
           "serve_guarded", "tune_gc", "with_api_key"]

log = logging.getLogger("wshub")

EPILOG = """\
Every config key can also be set from the environment, which wins over the
file: WSHUB_<SECTION>_<KEY> in upper snake case, e.g. redis.address is
WSHUB_REDIS_ADDRESS and webSocket.pongWait is WSHUB_WEBSOCKET_PONG_WAIT; an
unknown WSHUB_* variable is an error, like an unknown key in the file.
Exit status: 0 stopped (or config valid), 1 cannot start, 2 bad config.
Every key, its variable and default: docs/configuration.md
"""


class Serve(Protocol):
    """A shell's one hub process: serve ``config`` until stopped; the exit status."""

    def __call__(self, config: Config, *, config_file: str | None, json_errors: bool,
                 reuseport: bool = False) -> int: ...


def raise_file_limit() -> int:
    """Every client is a file descriptor: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def report_error(message: str, *, json_lines: bool) -> None:
    """One line on stderr, also before logging is set up: a log shipper reading JSON must not choke on it.

    The fields are those of ``_logging._JsonFormatter``.
    """
    if json_lines:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        line = json.dumps({"time": stamp, "level": "error", "logger": "wshub", "message": message})
    else:
        line = f"wshub: {message}"
    print(line, file=sys.stderr, flush=True)


class _Version(argparse.Action):
    """``--version``, read from the installed package's metadata only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        print(f"wshub {importlib.metadata.version('wshub')}")
        parser.exit()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wshub", description="Redis pub/sub <-> WebSocket hub.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    parser.add_argument("--config", metavar="PATH", help="YAML config file (default: ./config.yaml if present)")
    parser.add_argument("--check-config", action="store_true",
                        help="check, print the effective config, exit 0 (or 2)")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines (same as logFormat: json)")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level (overrides logLevel)")
    return parser.parse_args(argv)


def read_config_file(option: str | None) -> tuple[Path, str | None]:
    """The file's path and text; no text when ``--config`` is not given and ``./config.yaml`` does not exist.

    Anything that is there but cannot be read (a directory, not UTF-8, no
    permission) is a config error: a hub silently running on defaults is worse.
    """
    path = Path(option or "config.yaml")
    if option is None and not (path.exists() or path.is_symlink()):
        return path, None
    json_logs = os.environ.get(env_name("logFormat")) == "json"
    try:
        return path, path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}", json_logs=json_logs) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})",
                          json_logs=json_logs) from None


def check_output(config: Config) -> str:
    """``--check-config``'s YAML; with a comment when secrets are masked, so it is not taken for a usable file."""
    text = yaml.safe_dump(config.as_dict(), sort_keys=False)
    hidden = config.hidden_keys()
    if hidden:
        text = (f"# {', '.join(hidden)}: hidden as ***; set the real value before using this as a config file\n"
                + text)
    return text


def read_key_files(config: Config) -> Config:
    """The config with ``auth.jwt.publicKey``'s file read (the core reads no file), checked by building the verifier.

    A missing or unreadable file, or one that holds no RSA/EC public key, is a
    config error naming the key and where its value came from.
    """
    path = config.jwt_public_key
    if path and not config.jwt_public_key_pem:
        try:
            config = dataclasses.replace(config, jwt_public_key_pem=Path(path).read_text(encoding="ascii"))
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not a PEM text file"
            raise ConfigError(f"{config.where('auth.jwt.publicKey')}: cannot read {path!r}: {why}",
                              json_logs=config.log_format == "json") from None
    token_verifier(config)
    return config


def with_api_key(config: Config) -> Config:
    """The config with an API key: the configured one, else one generated now and logged once.

    The API is never open without a key. Generated here, before workers fork,
    so every worker of one start accepts the same key.
    """
    if config.api_key:
        return config
    key = secrets.token_urlsafe(18)
    log.warning("HTTP API key (generated at start; set api.key or WSHUB_API_KEY to keep one): %s", key,
                extra={"event": "api_key_generated"})
    return dataclasses.replace(config, api_key=key, origins={**config.origins, "api.key": "api.key (generated)"})


def main(argv: list[str] | None, *, serve: Serve) -> int:
    """The whole command line; ``serve`` is the shell's (its event loop starts there, in each worker)."""
    args = parse_args(argv)
    try:
        path, text = read_config_file(args.config)
        config = read_key_files(load_config(text, source=str(path), environ=os.environ))
        if args.check_config:
            server_tls_context(config)  # the start loads the files too: a check that passes must start
    except ConfigError as exc:
        report_error(f"bad config: {exc}", json_lines=args.log_json or exc.json_logs)
        return 2
    if args.check_config:
        print(check_output(config), end="")
        return 0
    json_lines = args.log_json or config.log_format == "json"
    setup_logging(json_lines=json_lines, level="debug" if args.debug else config.log_level)
    config = with_api_key(config)
    raise_file_limit()
    config_file = str(path.absolute()) if text is not None else None
    tune_gc()  # before the fork: every worker inherits it
    if config.workers > 1:
        return supervise(config, config_file=config_file, json_errors=json_lines, serve=serve)
    return serve(config, config_file=config_file, json_errors=json_lines)


# CPython's defaults are (700, 10, 10): a young collection every 700 more container objects than were freed.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collect less often, and never scan what the start set up.

    Each connection is 16 tracked objects that live as long as it. With
    CPython's thresholds a burst of connects spends about a tenth of its CPU in
    the collector, promoting and rescanning them (docs/benchmarks.md, "The
    garbage collector at connect"). The core leaves no cyclic garbage behind a
    closed connection (bench/gc_pause.py counts both; a test keeps the count at
    0), so a larger young generation holds little garbage. The modules,
    config and logging are frozen (``gc.freeze``): full collections skip them,
    and forked workers leave their pages shared.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def serve_guarded(run: Callable[[socket.socket | None], int], config: Config, *, json_errors: bool,
                  reuseport: bool) -> int:
    """``run`` (a shell's loop, given the worker's SO_REUSEPORT socket or None), with start errors as exit codes."""
    try:
        return run(reuseport_socket(config) if reuseport else None)
    except ConfigError as exc:  # found while starting (e.g. an unreadable TLS key)
        report_error(f"bad config: {exc}", json_lines=json_errors)
        return 2
    except OSError as exc:  # e.g. the address is in use
        report_error(f"cannot start: {exc}", json_lines=json_errors)
        return 1


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _end_with(supervisor: int) -> None:
    """A worker gets SIGTERM when its supervisor dies, as if relayed: a SIGKILLed supervisor (OOM killer,
    ``kill -9``) relays nothing, and its workers would serve on, unseen, beside the next start's."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(config: Config, *, config_file: str | None, json_errors: bool, serve: Serve) -> int:
    """Fork ``workers`` hub processes on one SO_REUSEPORT port; relay SIGINT/SIGTERM; exit when all have.

    The fork happens before any event loop exists, so it is the same for every shell.
    """
    children: list[int] = []

    def relay(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGINT, relay)  # before forking: no window where a signal kills only us
    signal.signal(signal.SIGTERM, relay)
    supervisor = os.getpid()
    for number in range(1, config.workers + 1):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                set_worker(f"w{number}")  # every line, and every client id, names its worker
                signal.signal(signal.SIGINT, signal.SIG_DFL)  # the worker's loop installs its own
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _end_with(supervisor)
                code = serve(config, config_file=config_file, json_errors=json_errors, reuseport=True)
            finally:
                os._exit(code)
        children.append(pid)
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, code if code >= 0 else 1)  # killed by a signal counts as failure
    return worst
