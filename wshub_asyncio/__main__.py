"""Command line: load the config, then serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys
from pathlib import Path

import yaml

from wshub_core import Config, ConfigError, load_config

from ._logging import set_worker, setup_logging
from ._server import reuseport_socket, run

__all__ = ["main"]


def raise_file_limit() -> int:
    """Every client is a file descriptor: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wshub", description="Redis pub/sub <-> WebSocket hub")
    parser.add_argument("--config", help="path of config.yaml (default: ./config.yaml if it exists)")
    parser.add_argument("--check-config", action="store_true", help="validate, print the effective config, exit")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines (same as logFormat: json)")
    parser.add_argument("--debug", action="store_true", help="debug logging")
    args = parser.parse_args(argv)

    path = Path(args.config) if args.config else Path("config.yaml")
    if args.config and not path.is_file():
        print(f"wshub: config file not found: {path}", file=sys.stderr)
        return 2
    text = path.read_text(encoding="utf-8") if path.is_file() else None
    try:
        config = load_config(text, source=str(path) if text is not None else "defaults", environ=os.environ)
    except ConfigError as exc:
        print(f"wshub: bad config: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(yaml.safe_dump(config.as_dict(), sort_keys=False), end="")
        return 0
    setup_logging(json_lines=args.log_json or config.log_format == "json", debug=args.debug)
    raise_file_limit()
    if config.workers > 1:
        return supervise(config)
    return serve(config)


def serve(config: Config, *, reuseport: bool = False) -> int:
    """One hub process; uvloop is used when installed (the 'fast' extra)."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    try:
        sock = reuseport_socket(config) if reuseport else None
        return asyncio.run(run(config, sock=sock))
    except ConfigError as exc:  # found while starting (e.g. an unreadable TLS key)
        print(f"wshub: bad config: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the address is in use
        print(f"wshub: cannot start: {exc}", file=sys.stderr)
        return 1


def supervise(config: Config) -> int:
    """Fork ``workers`` hub processes on one SO_REUSEPORT port; relay SIGINT/SIGTERM; exit when all have."""
    children: list[int] = []

    def relay(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGINT, relay)  # before forking: no window where a signal kills only us
    signal.signal(signal.SIGTERM, relay)
    for number in range(1, config.workers + 1):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                set_worker(f"w{number}")  # every line, and every client id, names its worker
                signal.signal(signal.SIGINT, signal.SIG_DFL)  # the worker's loop installs its own
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                code = serve(config, reuseport=True)
            finally:
                os._exit(code)
        children.append(pid)
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, code if code >= 0 else 1)  # killed by a signal counts as failure
    return worst


if __name__ == "__main__":
    sys.exit(main())
