#!/usr/bin/env python3
"""An example WS-Hub listener over the hub's HTTP API: no Redis, standard library only.

It does what ``listener.py`` does, through the hub's own port instead of
Redis (docs/protocol.md, "HTTP API"): it reads ``GET /api/events`` and
answers every ``client-new`` with ``PUT /api/keys/KEY/groups``, a JSON array of

* every group of ``--groups`` (a comma list, default ``all``), and
* one group per ``--key-group`` template, with ``{key}`` replaced by the
  client's key (default ``user-{key}``). Pass ``--key-group ''`` for none.

The group options, their defaults and the group rule are ``listener.py``'s
(tests/test_example_api_listener.py checks that both answer alike), so the two
listeners are interchangeable. With the memory broker this file and the hub
are all a deployment needs; on the Redis broker it works just as well.

Each event is printed as one line on stdout, so that a supervisor or a test
can follow it (control characters in keys and data are shown escaped, so an
event is always one line):

    ready                        the event stream is open (its 200 head arrived)
    new KEY -> G1,G2             a client-new, answered (the hub said 200)
    failed KEY: REASON           a client-new whose answer the hub refused or never got
    gone KEY                     a client-gone: the last connection of KEY closed
    data KEY: TEXT               a client-data message (only with --print-data)
    binary KEY: BASE64           a binary client-data message (only with --print-data)
    skipped: REASON              an event that is not UTF-8 or not what the hub sends
    reconnecting: REASON         the stream could not be opened or broke; retrying
    stopped                      SIGINT/SIGTERM; exits 0

Errors go to stderr: a hub that refuses the key (401) ends the listener with
exit status 2, naming ``api.key``/``WSHUB_API_KEY``; so does a missing key.

If the stream breaks (the hub restarted, the network failed, nothing arrived
for ``--idle-timeout`` seconds although the hub sends a keepalive every
``webSocket.pongWait / 2``), the listener reconnects, waiting 0.1 s, 0.2 s,
0.4 s, ... up to 5 s between attempts. Events are pub/sub: nothing is stored
for a listener that is away, so a client announced during the gap gets no
groups from it. Set ``webSocket.groupsTimeout`` in the hub's config so that
such clients are closed (1008) and reconnect, to be announced again. On the
Redis broker, ``ready`` comes as the hub takes the stream, a moment before
Redis confirms the stream's subscriptions: an announcement another hub makes
in that moment is missed too.

Usage:
    WSHUB_API_KEY=secret python example/api_listener.py --url http://127.0.0.1:8080 --groups all,news
    python example/api_listener.py --url https://hub.internal --api-key secret --print-data

Rules: it never stops on what it reads (anything the hub might send is
printed, answered or skipped), and it holds at most one event, of at most
``MAX_EVENT`` bytes.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import http.client
import io
import json
import os
import signal
import sys
import time
import urllib.parse
from types import FrameType

BACKOFF_MIN = 0.1  # seconds before the first reconnect; doubled after each failed attempt
BACKOFF_MAX = 5.0
PUT_TIMEOUT = 10.0  # seconds for one PUT's answer
MAX_EVENT = 16 * 1024 * 1024  # bytes; a larger event is skipped (the hub's are far smaller)


# -- the group rule: the same as listener.py's --------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupRule:
    """Which groups a client joins: the fixed ones, then one per template, ``{key}`` replaced."""

    fixed: tuple[str, ...]
    templates: tuple[str, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GroupRule:
        templates = ["user-{key}"] if args.key_groups is None else args.key_groups
        return cls(fixed=tuple(g.strip() for g in args.groups.split(",") if g.strip()),
                   templates=tuple(t for t in templates if t))

    def groups_for(self, key: str) -> list[str]:
        """The groups of one client; keep the order, drop duplicates and empty names."""
        out: list[str] = []
        for group in [*self.fixed, *(t.replace("{key}", key) for t in self.templates)]:
            if group and group not in out:
                out.append(group)
        return out


# -- Server-Sent Events, sans-IO: bytes in, events out ------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RawEvent:
    """One dispatched event: its ``event:`` name (``message`` if none) and its ``data:`` lines joined by LF."""

    name: bytes
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    """Something that is not an event the listener can act on, and why."""

    reason: str


class EventParser:
    """The ``text/event-stream`` format (WHATWG HTML, "Server-sent events"), resumable, bounded.

    ``feed`` takes bytes as they arrive, in pieces of any size, and returns the
    events they complete. Lines end in LF, CRLF or CR; ``: ...`` lines are
    comments (the hub's keepalives); a blank line dispatches the event; a
    block without ``data:`` dispatches nothing. An event larger than
    ``max_size`` bytes (one long line or many) comes out as one ``Skipped``,
    and what is held of it never grows past that.
    """

    def __init__(self, *, max_size: int = MAX_EVENT) -> None:
        self._max_size = max_size
        self._buffer = bytearray()
        self._searched = 0  # bytes at the start of _buffer known to hold no line end
        self._discarding = False  # inside a line too long to keep: drop bytes up to its end
        self._too_big = False  # the current event is over max_size: dispatch a Skipped
        self._size = 0  # bytes of the current event so far
        self._name = b""
        self._data: list[bytes] | None = None  # None: no data field yet

    def feed(self, data: bytes) -> list[RawEvent | Skipped]:
        self._buffer += data
        out: list[RawEvent | Skipped] = []
        while (line := self._next_line()) is not None:
            event = self._line(line)
            if event is not None:
                out.append(event)
        if len(self._buffer) > self._max_size:  # no line end in sight: drop what we hold of this line
            self._buffer.clear()
            self._searched = 0
            self._discarding = self._too_big = True
        return out

    def _next_line(self) -> bytes | None:
        buffer = self._buffer
        lf, cr = buffer.find(b"\n", self._searched), buffer.find(b"\r", self._searched)
        if lf < 0 and cr < 0:
            self._searched = len(buffer)
            return None
        if cr >= 0 and (lf < 0 or cr < lf):  # a CR ends the line; a CRLF pair is one line end
            if cr + 1 == len(buffer):
                self._searched = cr  # the LF that may follow has not arrived yet
                return None
            end, after = cr, cr + (2 if buffer[cr + 1] == 0x0A else 1)
        else:
            end, after = lf, lf + 1
        line = bytes(buffer[:end])
        del buffer[:after]
        self._searched = 0
        if self._discarding:  # the end of a line whose start was dropped: a comment, in effect
            self._discarding = False
            return b":"
        return line

    def _line(self, line: bytes) -> RawEvent | Skipped | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None
        self._size += len(line)
        if self._size > self._max_size:
            self._too_big, self._name, self._data = True, b"", None  # let go of what it held
        if self._too_big:
            return None
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            self._name = value
        elif field == b"data":
            if self._data is None:
                self._data = []
            self._data.append(value)
        return None  # id, retry and unknown fields: nothing the hub's events need

    def _dispatch(self) -> RawEvent | Skipped | None:
        name, data, too_big = self._name, self._data, self._too_big
        self._name, self._data, self._too_big, self._size = b"", None, False, 0
        if too_big:
            return Skipped(reason=f"an event over {self._max_size} bytes")
        if data is None:
            return None
        return RawEvent(name=name or b"message", data=b"\n".join(data))


# -- the hub's events ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClientNew:
    key: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClientGone:
    key: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClientData:
    key: str
    data: str | bytes  # bytes: the client sent a binary message


HubEvent = ClientNew | ClientGone | ClientData

EVENT_NAMES = (b"client-new", b"client-gone", b"client-data")


def interpret(event: RawEvent) -> HubEvent | Skipped | None:
    """What one event means; None for an event of another name (one a newer hub may add)."""
    if event.name not in EVENT_NAMES:
        return None
    name = event.name.decode()
    try:
        fields = json.loads(event.data.decode("utf-8"))
    except UnicodeDecodeError:
        return Skipped(reason=f"{name}: data that is not UTF-8")
    except ValueError as exc:
        return Skipped(reason=f"{name}: data that is not JSON ({exc})")
    except RecursionError:
        return Skipped(reason=f"{name}: JSON nested too deep")
    key = fields.get("key") if isinstance(fields, dict) else None
    if not isinstance(key, str):
        return Skipped(reason=f'{name}: no string "key" in {printable(event.data.decode())[:200]}')
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return Skipped(reason=f"{name}: a key with a lone surrogate, which no hub announces")
    if name == "client-new":
        return ClientNew(key=key)
    if name == "client-gone":
        return ClientGone(key=key)
    data = fields.get("data")
    if not isinstance(data, str):
        return Skipped(reason=f'client-data of {printable(key)}: no string "data"')
    if fields.get("binary") is True:
        try:
            return ClientData(key=key, data=base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            return Skipped(reason=f"client-data of {printable(key)}: binary data that is not base64")
    return ClientData(key=key, data=data)


_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), *range(0x7F, 0xA0)]} | {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``), so that it stays on one line."""
    return text.translate(_ESCAPES)


# -- the process: one event stream, one keep-alive connection for the answers -------------------------------


class Unauthorized(Exception):
    """The hub answered 401: the key is wrong, and trying again will not change that."""


class Refused(Exception):
    """The hub answered the event stream's request with something else than a stream."""


class Stop(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, like KeyboardInterrupt: no handler swallows it)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop


def say(line: str) -> None:
    sys.stdout.write(line + "\n")  # one write: a signal cannot split the line
    sys.stdout.flush()


def describe(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed in the middle of an answer"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class HubApi:
    """The hub's HTTP API at ``url``: the event stream, and the PUTs on one keep-alive connection."""

    def __init__(self, *, url: str, api_key: str, idle_timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._base = parts.path.rstrip("/")  # a hub behind a proxy under a path prefix
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self.idle_timeout = idle_timeout
        self._put: http.client.HTTPConnection | None = None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def open_events(self) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """``GET /api/events`` up to its 200 head; Unauthorized or Refused otherwise."""
        conn = self._connection(self.idle_timeout)
        try:
            conn.request("GET", f"{self._base}/api/events",
                         headers={**self._headers, "Accept": "text/event-stream"})
            response = conn.getresponse()
            if response.status == 401:
                raise Unauthorized
            content_type = response.getheader("content-type", "")
            if response.status != 200 or not content_type.startswith("text/event-stream"):
                body = response.read(200).decode("utf-8", "replace").strip()
                raise Refused(f"HTTP {response.status} {response.reason} ({content_type or 'no content-type'})"
                              + (f": {body}" if body else ""))
        except BaseException:
            conn.close()
            raise
        return conn, response

    def put_groups(self, key: str, groups: list[str]) -> str:
        """Set the groups of ``key``; "" once the hub said 200, else why not.

        Sent on the one keep-alive connection; if the hub closed it (idle, or
        restarted) the PUT goes again on a new one. That is safe: a PUT of the
        same groups twice sets the same groups.
        """
        path = f"{self._base}/api/keys/{urllib.parse.quote(key, safe='')}/groups"
        body = json.dumps(groups).encode()
        headers = {**self._headers, "Content-Type": "application/json"}
        for attempt in (1, 2):
            if self._put is None:
                self._put = self._connection(PUT_TIMEOUT)
            try:
                self._put.request("PUT", path, body=body, headers=headers)
                response = self._put.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close_put()
                if attempt == 2:
                    return describe(exc)
                continue
            if response.will_close:
                self.close_put()
            if response.status == 401:
                raise Unauthorized
            if response.status == 200:
                return ""
            return f"HTTP {response.status} {printable(answer.decode('utf-8', 'replace').strip())}"
        raise AssertionError("unreachable")

    def close_put(self) -> None:
        if self._put is not None:
            self._put.close()
            self._put = None


class ApiListener:
    """Follows the event stream for ever, answering and printing each event."""

    def __init__(self, *, api: HubApi, rule: GroupRule, print_data: bool) -> None:
        self._api = api
        self._rule = rule
        self._print_data = print_data

    def run(self) -> None:
        """Returns only by an exception: Unauthorized, or Stop from a signal."""
        delay = BACKOFF_MIN
        while True:
            try:
                conn, response = self._api.open_events()
            except (OSError, http.client.HTTPException, Refused) as exc:
                reason = describe(exc)
            else:
                delay = BACKOFF_MIN  # the stream was up: a break starts again from the shortest wait
                say("ready")
                try:
                    reason = self._follow(response)
                finally:
                    conn.close()
            say(f"reconnecting: {printable(reason)}")
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _follow(self, response: http.client.HTTPResponse) -> str:
        """Handle events until the stream ends or breaks; why it did."""
        parser = EventParser()
        try:
            while data := response.read1(65536):
                for item in parser.feed(data):
                    event = interpret(item) if isinstance(item, RawEvent) else item
                    if event is not None:
                        self._handle(event)
        except TimeoutError:
            return f"no data for {self._api.idle_timeout:g}s"
        except (OSError, http.client.HTTPException) as exc:
            return describe(exc)
        return "the event stream ended"

    def _handle(self, event: HubEvent | Skipped) -> None:
        if isinstance(event, ClientNew):
            groups = self._rule.groups_for(event.key)
            why = self._api.put_groups(event.key, groups)
            key = printable(event.key)
            say(f"failed {key}: {why}" if why else f"new {key} -> {printable(','.join(groups))}")
        elif isinstance(event, ClientGone):
            say(f"gone {printable(event.key)}")
        elif isinstance(event, ClientData):
            if self._print_data:
                if isinstance(event.data, bytes):
                    say(f"binary {printable(event.key)}: {base64.b64encode(event.data).decode()}")
                else:
                    say(f"data {printable(event.key)}: {printable(event.data)}")
        else:
            say(f"skipped: {event.reason}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="WS-Hub example listener over the HTTP API: answers client-new "
                                                 "with groups")
    parser.add_argument("--url", default="http://127.0.0.1:8080",
                        help="the hub's base URL, http:// or https:// (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("WSHUB_API_KEY", ""),
                        help="the hub's api.key (default: $WSHUB_API_KEY, which keeps it out of `ps`)")
    parser.add_argument("--groups", default="all",
                        help="comma-separated groups every client joins (default: %(default)s)")
    parser.add_argument("--key-group", action="append", dest="key_groups", metavar="TEMPLATE",
                        help="a per-client group, {key} is the client's key; repeatable, '' for none "
                             "(default: user-{key})")
    parser.add_argument("--print-data", action="store_true",
                        help="print client-data events (data KEY: TEXT, binary KEY: BASE64)")
    parser.add_argument("--idle-timeout", type=float, default=90.0, metavar="SECONDS",
                        help="reconnect when the stream is silent this long; the hub sends a keepalive every "
                             "webSocket.pongWait / 2 (default: %(default)s)")
    args = parser.parse_args(argv)
    parts = urllib.parse.urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        parser.error(f"--url must be http://HOST[:PORT] or https://HOST[:PORT], got {args.url!r}")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError as exc:
        parser.error(f"--url {args.url!r}: {exc}")
    if not args.api_key:
        parser.error("no API key: pass --api-key or set WSHUB_API_KEY to the hub's api.key")
    if not args.idle_timeout > 0:
        parser.error("--idle-timeout must be above 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):  # a key or a message no terminal can show must not crash us
        sys.stdout.reconfigure(errors="backslashreplace")
    listener = ApiListener(api=HubApi(url=args.url, api_key=args.api_key, idle_timeout=args.idle_timeout),
                           rule=GroupRule.from_args(args), print_data=args.print_data)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    try:
        listener.run()
    except Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # we are leaving anyway: a second signal must not cut "stopped"
        say("stopped")
        return 0
    except Unauthorized:
        print(f"{os.path.basename(sys.argv[0])}: error: the hub at {args.url} refused the API key (HTTP 401): "
              "pass its api.key with --api-key or WSHUB_API_KEY", file=sys.stderr)
        return 2
    raise AssertionError("run() returned")


if __name__ == "__main__":
    sys.exit(main())
