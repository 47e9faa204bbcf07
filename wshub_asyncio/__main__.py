"""Command line: load the config, then serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
from pathlib import Path

import yaml

from wshub_core import ConfigError, load_config

from ._logging import setup_logging
from ._server import run

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
    try:
        return asyncio.run(run(config))
    except ConfigError as exc:  # found while starting (e.g. an unreadable TLS key)
        print(f"wshub: bad config: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the address is in use
        print(f"wshub: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
