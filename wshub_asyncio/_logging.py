"""Log formatting: human-readable lines, or JSON lines for log shippers.

This is the one place where logged values are made safe (docs/operations.md#logs).

Rules:
1. Log calls pass raw values (keys, close reasons, Redis payloads, bytes) as
   arguments and ``extra`` fields; the formatters here escape and cut them.
   No call site escapes anything itself.
2. A text record is one line: every str/bytes argument has its control
   characters and backslashes escaped (``\\n``, ``\\r``, ``\\x00``, ``\\\\``), so a
   client cannot start a line of its own; bytes are decoded as UTF-8 with
   backslashreplace, never shown as ``b'...'``. A traceback's lines are indented,
   so only a record's first line starts at the margin.
3. Every value is cut at ``MAX_VALUE`` characters (``...(+N chars)`` /
   ``...(+N bytes)``) and a collection at ``MAX_ITEMS`` items, so the size of a
   line does not depend on what a client or Redis sent.
4. With ``workers``, every record carries its worker's name (``set_worker``).
"""

from __future__ import annotations

import heapq
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from wshub_core._logs import FIELDS

__all__ = ["MAX_ITEMS", "MAX_VALUE", "JsonFormatter", "TextFormatter", "set_worker", "setup_logging",
           "worker_name"]

MAX_VALUE = 256  # characters of one value
MAX_ITEMS = 5  # items of one collection (e.g. a key's groups)
MAX_MESSAGE = 4096  # characters of a whole message, for messages built without arguments

_worker = ""


def set_worker(name: str) -> None:
    """Name this process (``w1``..``wN``) in every record from now on; called in a forked worker."""
    global _worker
    _worker = name


def worker_name() -> str:
    """This process's worker name, or "" when it is the only process."""
    return _worker


def _escape_table(*, backslash: bool) -> dict[int, str]:
    table = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
    table.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})
    # Line and paragraph separators split lines for many tools; bidi controls reorder what a reader sees.
    for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A), *range(0xD800, 0xE000)):
        table[c] = f"\\u{c:04x}"
    if backslash:
        table[0x5C] = "\\\\"  # so that a backslash in the output always starts an escape
    return table


_STR_ESCAPES = _escape_table(backslash=True)
# Bytes are decoded with surrogateescape: a byte that is not UTF-8 arrives as U+DC80..U+DCFF and shows as \xNN.
_BYTES_ESCAPES = {**_STR_ESCAPES, **{c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)}}
# For the whole message: the format string and str() of objects are not ours to re-escape, only to keep on one line.
_MESSAGE_ESCAPES = _escape_table(backslash=False)


def _cut_marker(n: int, unit: str) -> str:
    return f"...(+{n - MAX_VALUE} {unit})" if n > MAX_VALUE else ""


def _text_value(value: str | bytes | bytearray | memoryview) -> str:
    """A str or bytes value as one escaped, bounded piece of a text line."""
    if isinstance(value, str):
        return value[:MAX_VALUE].translate(_STR_ESCAPES) + _cut_marker(len(value), "chars")
    text = bytes(value[:MAX_VALUE]).decode("utf-8", "surrogateescape")  # a character cut in two shows as \xNN
    return text.translate(_BYTES_ESCAPES) + _cut_marker(len(value), "bytes")


def _json_text(value: str | bytes | bytearray | memoryview) -> str:
    """A str or bytes value, bounded, for JSON (json.dumps escapes; bytes that are not UTF-8 show as \\xNN)."""
    if isinstance(value, str):
        return value[:MAX_VALUE] + _cut_marker(len(value), "chars")
    return bytes(value[:MAX_VALUE]).decode("utf-8", "backslashreplace") + _cut_marker(len(value), "bytes")


def _items(value: Any) -> tuple[list[Any], int]:
    """The first ``MAX_ITEMS`` items (the smallest of a set, for a stable line) and how many there are."""
    n = len(value)
    if isinstance(value, (set, frozenset)):
        try:
            return heapq.nsmallest(MAX_ITEMS, value), n
        except TypeError:  # items that do not compare
            return [v for v, _ in zip(value, range(MAX_ITEMS), strict=False)], n
    return list(value[:MAX_ITEMS]), n


def _arg(value: Any, text: Callable[[str | bytes | bytearray | memoryview], str]) -> Any:
    """One message argument made safe by ``text`` (escaping or not); numbers and None are kept for ``%d``."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return text(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        shown, n = _items(value)
        parts = [str(_arg(v, text)) for v in shown]
        if n > len(shown):
            parts.append(f"...(+{n - len(shown)} more)")
        return "[" + ", ".join(parts) + "]"
    if isinstance(value, BaseException):
        return text(str(value))
    return value


def _text_arg(value: Any) -> Any:
    return _arg(value, _text_value)


def _json_arg(value: Any) -> Any:
    return _arg(value, _json_text)


def _json_value(value: Any) -> Any:
    """One structured field for JSON: bounded, bytes as text, a collection as a bounded list."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return _json_text(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        shown, n = _items(value)
        out = [_json_value(v) for v in shown]
        if n > len(shown):
            out.append(f"...(+{n - len(shown)} more)")
        return out
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _json_text(str(value))


def _message(record: logging.LogRecord, convert: Callable[[Any], Any]) -> str:
    args = record.args
    if not args:
        return str(record.msg)
    if isinstance(args, Mapping):
        safe: Any = {k: convert(v) for k, v in args.items()}
    else:
        safe = tuple(convert(a) for a in args)
    try:
        message: str = str(record.msg) % safe
        return message
    except (TypeError, ValueError):  # a bad format string in some library: show what there is
        return f"{record.msg} {safe!r}"


def _bounded(message: str) -> str:
    if len(message) > MAX_MESSAGE:
        return f"{message[:MAX_MESSAGE]}...(+{len(message) - MAX_MESSAGE} chars)"
    return message


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER[WORKER]: MESSAGE`` on one line; every value escaped and cut."""


    def format(self, record: logging.LogRecord) -> str:
        # Built here rather than by Formatter.format on a copy of the record (a second LogRecord per line
        # was a third of a line's cost); the record itself is left as it came, for other handlers.
        worker = getattr(record, "worker", "")
        message = _bounded(_message(record, _text_arg).translate(_MESSAGE_ESCAPES))
        line = (f"{self.formatTime(record)} {record.levelname} {record.name}{f'[{worker}]' if worker else ''}: "
                f"{message}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line

    def formatException(self, ei: Any) -> str:
        return "    " + super().formatException(ei).replace("\n", "\n    ")

    def formatStack(self, stack_info: str) -> str:
        return "    " + stack_info.replace("\n", "\n    ")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, worker, message, the structured fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        worker = getattr(record, "worker", "")
        if worker:
            entry["worker"] = worker
        entry["message"] = _bounded(_message(record, _json_arg))
        fields = record.__dict__
        for name in FIELDS:
            if name in fields:
                entry[name] = _json_value(fields[name])
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _WorkerFilter(logging.Filter):
    """Stamps every record with this process's worker name (the records of libraries too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = _worker
        return True


def setup_logging(*, json_lines: bool, level: str = "info") -> None:
    """One handler on stderr at ``level`` (``logLevel``, or ``--debug``)."""
    # What no line of ours shows is not collected per record (the logging HOWTO's "Optimization"): the
    # caller's file and line, thread and process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(_WorkerFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
