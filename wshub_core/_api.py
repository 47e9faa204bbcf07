"""The HTTP API for backends: publish to a group, set a key's groups, send to or kick a key, hear events, status.

Every call becomes a publish on the broker, on the same channels a Redis
backend would use (docs/protocol.md, HTTP API), so a call reaches every hub
that shares the broker, and ``redis-cli`` and the API can be mixed freely.
The event stream (``GET /api/events``, Server-Sent Events) is the other way
round: while one is open, the hub needs ``client-new``, ``client-gone`` and
every ``client-data:KEY``, and writes each as one event to every stream.

Rules:
1. A publishing call is answered once the broker took the message (Redis:
   the PUBLISH was acknowledged), never before: a 200 means it was sent.
   A broker that cannot publish now (Redis: the command link is not up) or is
   over its bound gets 503 at once, not a
   request that hangs.
2. Nothing here touches bytes on a socket: the client table reads the body,
   answers and streams; ``route`` (``_http.py``) decided auth, path and method.
3. A stream that stops reading is the client table's slow consumer like any
   other socket: closed, never buffered without bound.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable

from ._broker import Broker
from ._channels import Channels
from ._clients import ClientTable
from ._config import Config
from ._http import JSON, Answer, ApiCall, ApiKind, api_error
from ._metrics import Sample

__all__ = ["Api"]

log = logging.getLogger("wshub")

_OK = json.dumps({"ok": True}) + "\n"
_STREAM_HEADERS = (("cache-control", "no-cache"), ("x-accel-buffering", "no"))  # nginx: do not buffer


def _reply(clients: ClientTable, conn: int, answer: Answer) -> None:
    clients.answer(conn, answer.status, answer.body, headers=answer.headers, content_type=answer.content_type,
                   keep_alive=answer.keep_alive)


def groups_error(body: bytes) -> str | None:
    """Why a ``PUT .../groups`` body is not a JSON array of strings (None: it is one)."""
    try:
        # Strict UTF-8 first, as parse_groups reads it: json.loads(bytes) would also take UTF-16/32 and a
        # BOM, which the hubs receiving the answer would then read as something else.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "the body is not UTF-8"
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"the body is not JSON: {exc}"
    if not isinstance(value, list):
        return f"the body must be a JSON array of strings, got {type(value).__name__}"
    for item in value:
        if not isinstance(item, str):
            return f"the body must be a JSON array of strings, got an item {json.dumps(item)}"
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            return "a group name holds a lone surrogate (\\ud800...), which no channel name can"
    return None


class Api:
    """The API's calls in flight and its open event streams."""

    def __init__(self, *, config: Config, clients: ClientTable, broker: Broker, channels: Channels,
                 not_ready_reason: Callable[[], str], status: Callable[[], dict[str, object]]) -> None:
        """``not_ready_reason``: why a call the broker cannot take now gets 503 (the hub's /readyz reason);
        ``status``: the hub's ``GET /api/status`` object, built when asked (``_status.py``)."""
        self._config = config
        self._clients = clients
        self._broker = broker
        self._channels = channels
        self._not_ready_reason = not_ready_reason
        self._status = status
        self._reading: dict[int, ApiCall] = {}  # conn -> the call whose body is being read
        self._tickets: dict[int, int] = {}  # ticket -> conn waiting for the broker to take its publish
        self._queries: dict[int, tuple[int, str]] = {}  # ticket -> (conn, group) waiting for a presence answer
        self._next_ticket = 0
        self._streams: dict[int, None] = {}  # open event streams, in order of opening
        self.calls = 0
        self.events = 0

    # -- requests --------------------------------------------------------------------

    def request(self, conn: int, call: ApiCall) -> None:
        """An authorised call's head: open the stream, or read the body first."""
        self.calls += 1
        if call.kind is ApiKind.EVENTS:
            self._open_stream(conn)
            return
        if call.kind is ApiKind.STATUS:  # read-only, answered at once, whatever the broker's state
            self._clients.answer(conn, 200, json.dumps(self._status()) + "\n", content_type=JSON,
                                 headers=(("cache-control", "no-store"),), keep_alive=True)
            return
        if call.kind is ApiKind.PRESENCE:
            self._query(conn, call.name)
            return
        self._reading[conn] = call
        self._clients.read_body(conn, self._config.api_max_body_size)

    def body(self, conn: int, data: bytes) -> None:
        """The body of the call ``request`` asked for is complete: publish it, or refuse it."""
        call = self._reading.pop(conn, None)
        if call is None:
            return
        channels = self._channels
        broker = self._broker
        if call.kind is ApiKind.KEY_GROUPS:
            why = groups_error(data)
            if why is not None:
                _reply(self._clients, conn, api_error(400, why))
                return
            channel = channels.groups_new(call.name)
        elif call.kind is ApiKind.GROUP_PUBLISH:
            channel = channels.group_data(call.name)
        elif call.kind is ApiKind.KEY_SEND:
            channel = channels.client_send(call.name)
        else:
            channel = channels.client_kick(call.name)
        if not broker.can_publish:
            # Only whether the broker can take a publish now: a subscription of some key that is still being
            # confirmed must not refuse everyone's calls.
            _reply(self._clients, conn, api_error(503, f"not ready: {self._not_ready_reason()}",
                                                  (("retry-after", "1"),)))
            return
        if broker.buffered_bytes > self._config.max_buffered_bytes:
            _reply(self._clients, conn, api_error(503, "the broker is over redis.maxBufferedBytes",
                                                  (("retry-after", "1"),)))
            return
        self._next_ticket += 1
        ticket = self._next_ticket
        self._tickets[ticket] = conn
        if call.kind is ApiKind.GROUP_PUBLISH and self._config.history:
            broker.publish_history(channel, data, message_id=call.message_id, ticket=ticket)  # answers the offset
        else:
            broker.publish(channel, data, ticket=ticket)  # the memory broker confirms inside this call

    def published(self, ticket: int, error: str, offset: str = "") -> None:
        """The broker took (or refused) the publish of ``ticket``: answer its caller, if still there.

        A group message kept in history is answered with its ``offset``.
        """
        conn = self._tickets.pop(ticket, None)
        if conn is None or self._clients.get(conn) is None:
            return
        if error:
            status = 503 if error == "link lost" else 502
            _reply(self._clients, conn, api_error(status, f"the broker refused the message: {error}"))
        else:
            body = json.dumps({"ok": True, "offset": offset}) + "\n" if offset else _OK
            self._clients.answer(conn, 200, body, content_type=JSON, keep_alive=True)

    def _query(self, conn: int, group: str) -> None:
        if not self._config.presence:
            _reply(self._clients, conn, api_error(404, "presence is off: set presence.enabled to true"))
            return
        if not self._broker.can_publish:
            _reply(self._clients, conn, api_error(503, f"not ready: {self._not_ready_reason()}",
                                                  (("retry-after", "1"),)))
            return
        self._next_ticket += 1
        self._queries[self._next_ticket] = (conn, group)
        self._broker.presence_query(group, self._next_ticket)  # the memory broker answers inside this call

    def presence(self, ticket: int, counts: dict[str, int] | None, error: str) -> None:
        """The broker's answer to a presence query: who is in the group, on every hub."""
        conn, group = self._queries.pop(ticket, (0, ""))
        if not conn or self._clients.get(conn) is None:
            return
        if counts is None:
            status = 503 if error == "link lost" else 502
            _reply(self._clients, conn, api_error(status, f"presence not available: {error or 'bad reply'}",
                                                  (("retry-after", "1"),) if status == 503 else ()))
            return
        body = {"group": group, "keys": dict(sorted(counts.items())), "connections": sum(counts.values())}
        self._clients.answer(conn, 200, json.dumps(body) + "\n", content_type=JSON,
                             headers=(("cache-control", "no-store"),), keep_alive=True)

    def forget(self, conn: int) -> None:
        """A connection closed: drop its call and its stream (and the channels the last stream needed)."""
        self._reading.pop(conn, None)
        if self._streams.pop(conn, False) is None and not self._streams:
            self._broker.release(self._channels.client_new)
            self._broker.release(self._channels.client_gone)
            self._broker.release_prefix(self._channels.client_data_prefix)
            if self._config.presence:
                self._broker.release_prefix(self._channels.presence_prefix)

    # -- events ------------------------------------------------------------------------

    def _open_stream(self, conn: int) -> None:
        self._clients.start_stream(conn, content_type="text/event-stream", headers=_STREAM_HEADERS)
        self._clients.send_chunk(conn, b": wshub event stream\n\n")  # the head and a first byte, at once
        if not self._streams:
            self._broker.need(self._channels.client_new)
            self._broker.need(self._channels.client_gone)
            self._broker.need_prefix(self._channels.client_data_prefix)
            if self._config.presence:
                self._broker.need_prefix(self._channels.presence_prefix)
        self._streams[conn] = None

    def _presence_event(self, payload: bytes) -> bool:
        """``join`` / ``leave`` as published by a broker (``{"event", "group", "key"}``); anything else is ignored."""
        try:
            value = json.loads(payload)
        except ValueError:
            return True
        if not isinstance(value, dict) or value.get("event") not in ("join", "leave"):
            return True
        group, key = value.get("group"), value.get("key")
        if not isinstance(group, str) or not isinstance(key, str):
            return True
        chunk = f"event: {value['event']}\ndata: {json.dumps({'group': group, 'key': key})}\n\n".encode()
        self._write(chunk)
        return True

    def _write(self, chunk: bytes) -> None:
        self.events += 1
        for conn in self._streams:
            self._clients.send_chunk(conn, chunk)

    def samples(self) -> list[Sample]:
        """The API's metrics."""
        return [
            ("wshub_api_calls_total", "counter", "Authorised HTTP API calls.", [("", self.calls)]),
            ("wshub_api_event_streams", "gauge", "Open GET /api/events streams.", [("", len(self._streams))]),
            ("wshub_api_events_total", "counter", "Events written to the streams (each once, to every stream).",
             [("", self.events)]),
        ]

    @property
    def streaming(self) -> bool:
        """An event stream is open."""
        return bool(self._streams)

    def stream_count(self) -> int:
        return len(self._streams)

    def event(self, channel: bytes, payload: bytes) -> bool:
        """An announcement or a client message for the streams; False if ``channel`` is none of theirs."""
        channels = self._channels
        if channel == channels.client_new or channel == channels.client_gone:
            name = "client-new" if channel == channels.client_new else "client-gone"
            key_bytes = payload
            fields: dict[str, object] = {}
        elif channel.startswith(channels.presence_prefix):
            return self._presence_event(payload)
        elif channel.startswith(channels.client_data_prefix):
            name = "client-data"
            key_bytes = channel[len(channels.client_data_prefix):]
            try:
                fields = {"data": payload.decode("utf-8")}
            except UnicodeDecodeError:
                fields = {"data": base64.b64encode(payload).decode(), "binary": True}
        else:
            return False
        try:
            key = key_bytes.decode("utf-8")
        except UnicodeDecodeError:
            return True  # no hub announces such a key: someone else's bytes on our channel
        self._write(f"event: {name}\ndata: {json.dumps({'key': key, **fields})}\n\n".encode())
        return True
