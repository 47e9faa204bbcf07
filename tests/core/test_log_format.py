"""The log formatters (issue 8 items 3, 12, 13): one line per record, bounded, no ``b'...'``, structured JSON.

Records are built with ``logging.LogRecord`` directly, the way the core's log
calls build them: raw values as arguments and ``extra`` fields.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from typing import Any

from wshub_asyncio._logging import JsonFormatter, TextFormatter
from wshub_core._logs import fingerprint, host_port

FORGED = "bye\r\n2026-01-01 12:00:00,000 WARNING wshub: fake\x00"


def record(msg: str, *args: Any, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("wshub", level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def text(rec: logging.LogRecord) -> str:
    return TextFormatter().format(rec)


def as_json(rec: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    entry: dict[str, Any] = json.loads(line)
    return entry


class TestTextEscaping:
    def test_cr_lf_nul_in_a_close_reason_stay_on_one_line(self) -> None:
        line = text(record("client %s%d closed: code=%d reason=%s", "", 7, 1000, FORGED))
        assert line.splitlines() == [line]
        assert line.endswith(r"reason=bye\r\n2026-01-01 12:00:00,000 WARNING wshub: fake\x00")

    def test_every_line_breaking_character_is_escaped(self) -> None:
        line = text(record("key %s", "a\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x1b[31m\u202eb"))
        assert line.splitlines() == [line]
        assert line.endswith(r"key a\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x1b[31m\u202eb")

    def test_a_backslash_is_escaped_so_escapes_are_unambiguous(self) -> None:
        assert text(record("key %s", "a\\nb")).endswith(r"key a\\nb")

    def test_bytes_are_text_not_a_python_repr(self) -> None:
        line = text(record("groups for %s: %s", b"k\xffey", b"\x00[1,"))
        assert line.endswith(r"groups for k\xffey: \x00[1,")
        assert "b'" not in line

    def test_a_str_message_without_arguments_is_kept_on_one_line(self) -> None:
        line = text(record(FORGED))
        assert line.splitlines() == [line]

    def test_a_traceback_never_starts_a_line_at_the_margin(self) -> None:
        try:
            raise ValueError(FORGED)
        except ValueError:
            rec = logging.LogRecord("wshub", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
        first, *rest = text(rec).splitlines()
        assert first.endswith("failed") and rest
        assert all(line.startswith("    ") for line in rest), rest


class TestBounds:
    def test_a_10_kb_value_is_cut_with_a_marker(self) -> None:
        line = text(record("client %s%d connected: session_key sha256:%s (%s)", "", 1, "0" * 8, "k" * 10240))
        assert len(line) < 400
        assert line.endswith("k...(+9984 chars))")

    def test_10_kb_of_bytes_are_cut_by_bytes(self) -> None:
        line = text(record("payload %s", b"\xff" * 10240))
        assert line.endswith(r"\xff...(+9984 bytes)")
        assert len(line) < 1200

    def test_10000_groups_make_a_short_line_with_the_count_and_the_first_few(self) -> None:
        groups = frozenset(f"group-{i:05d}" for i in range(10000))
        line = text(record("groups of session_key sha256:%s set to %d group(s) %s for %d connection(s)",
                           "0" * 8, len(groups), groups, 1))
        assert len(line) < 300
        assert ("set to 10000 group(s) [group-00000, group-00001, group-00002, group-00003, group-00004, "
                "...(+9995 more)] for 1 connection(s)") in line

    def test_json_cuts_long_values_in_the_message_and_the_fields(self) -> None:
        groups = frozenset(f"g{i}" for i in range(10000))
        entry = as_json(record("client %s%d closed: reason=%s groups %s", "", 3, "r" * 10240, groups,
                               reason="r" * 10240, groups=groups))
        assert len(json.dumps(entry)) < 1500
        assert entry["reason"] == "r" * 256 + "...(+9984 chars)"
        assert entry["groups"] == ["g0", "g1", "g10", "g100", "g1000", "...(+9995 more)"]
        assert "...(+9995 more)" in entry["message"]


class TestJson:
    def test_structured_fields_are_emitted_and_escaped_by_json(self) -> None:
        entry = as_json(record("client %s%d closed: code=%d reason=%s", "", 7, 1000, FORGED,
                               event="close", conn=7, key="0123abcd", code=1000, reason=FORGED))
        assert {k: entry[k] for k in ("event", "conn", "key", "code", "reason")} == {
            "event": "close", "conn": 7, "key": "0123abcd", "code": 1000, "reason": FORGED}
        assert entry["message"] == f"client 7 closed: code=1000 reason={FORGED}"

    def test_bytes_fields_and_arguments_are_text(self) -> None:
        entry = as_json(record("refused: %s", b"https://e\xffvil", origin=b"https://e\xffvil", status=403))
        assert entry["origin"] == r"https://e\xffvil" and entry["status"] == 403
        assert entry["message"] == r"refused: https://e\xffvil"

    def test_the_worker_is_a_field(self) -> None:
        entry = as_json(record("listening", worker="w2"))
        assert entry["worker"] == "w2"
        assert "worker" not in as_json(record("listening"))


class TestWorkerTag:
    def test_the_text_line_names_the_worker_and_one_process_keeps_the_plain_name(self) -> None:
        assert " INFO wshub[w2]: client w2-5 connected" in text(record("client %s%d connected", "w2-", 5,
                                                                       worker="w2"))
        assert " INFO wshub: client 5 connected" in text(record("client %s%d connected", "", 5))


class TestFingerprint:
    def test_first_8_hex_of_sha256_of_the_utf8_key(self) -> None:
        key = "s\u00e9cret-\U0001f511"
        assert fingerprint(key) == hashlib.sha256(key.encode()).hexdigest()[:8]
        assert fingerprint("abc") == "ba7816bf"  # the same in every process and after a restart


class TestAddresses:
    def test_ipv6_in_brackets(self) -> None:
        assert host_port("::1", 6379) == "[::1]:6379"
        assert host_port("fe80::1%eth0", 80) == "[fe80::1%eth0]:80"
        assert host_port("10.0.0.1", 6379) == "10.0.0.1:6379"
        assert host_port("redis.local", 6379) == "redis.local:6379"
