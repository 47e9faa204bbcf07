"""permessage-deflate (RFC 7692) in the core: negotiation, one compressed frame per broadcast, the bomb bound.

No sockets: wsproto clients against the hub (memory broker), a virtual clock.
Autobahn sections 12 and 13 run against the real echo server (conformance/).
"""

from __future__ import annotations

import zlib

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from wshub_core import SendToClient, SendToClients
from wshub_core._deflate import BoundedDeflate, Compressor

from .harness import Client, Harness, make_config

_BLOCK = "".join(f"{(i * 7919) % 65521:04x}" for i in range(400))  # 1,600 bytes that barely repeat inside
BIG = '{"a": "' + _BLOCK + '", "b": "' + _BLOCK + '"}'  # the repeat is 1.6 KB back: past a 2^10 window


def deflate_harness(**overrides: object) -> Harness:
    return Harness(make_config("broker: memory\nwebSocket:\n  compression: true\n", **overrides))


def connect(h: Harness, key: str, extension: PerMessageDeflate | None) -> Client:
    client = h.open()
    client.ws = WSConnection(ConnectionType.CLIENT)
    data = client.ws.send(Request(host="hub.test", target=f"/ws?session_key={key}",
                                  extensions=[extension] if extension else []))
    h.client_data(client.conn, data)
    return client


def frames_to(h: Harness, client: Client, since: int) -> list[bytes]:
    return [a.data for a in h.actions_since(since) if (isinstance(a, SendToClient) and a.conn == client.conn)
            or (isinstance(a, SendToClients) and client.conn in a.conns)]


class TestNegotiation:
    """RFC 7692 section 7.1: the server answers an offer with both no_context_takeover parameters."""

    def test_an_offer_is_accepted_without_context_takeover_either_way(self) -> None:
        h = deflate_harness()
        offer = PerMessageDeflate()
        client = connect(h, "a", offer)
        assert client.status == 101
        assert offer.enabled() and offer.server_no_context_takeover and offer.client_no_context_takeover

    def test_compression_off_ignores_the_offer(self) -> None:
        h = Harness(make_config("broker: memory\n"))
        offer = PerMessageDeflate()
        client = connect(h, "a", offer)
        assert client.status == 101 and not offer.enabled()

    def test_a_window_the_client_asks_for_is_honoured(self) -> None:
        h = deflate_harness()
        offer = PerMessageDeflate(server_max_window_bits=10)
        connect(h, "a", offer)
        assert offer.server_max_window_bits == 10


class TestBroadcast:
    def test_one_compressed_frame_per_window_and_the_same_bytes_to_each_member(self) -> None:
        h = deflate_harness()
        clients = [connect(h, f"k{i}", PerMessageDeflate()) for i in range(3)]
        small_window = connect(h, "w10", PerMessageDeflate(server_max_window_bits=10))
        plain = connect(h, "plain", None)
        everyone = [*clients, small_window, plain]
        for key in ("k0", "k1", "k2", "w10", "plain"):
            h.hub.broker.publish(h.hub._channels.groups_new(key), b'["g"]')
        h.run()
        mark = h.mark()
        h.hub.broker.publish(h.hub._channels.group_data("g"), BIG.encode())
        h.run()
        sent = {client.conn: frames_to(h, client, mark) for client in everyone}
        same = [sent[c.conn][0] for c in clients]
        assert same[0] == same[1] == same[2]
        assert same[0][0] & 0x40  # RSV1: compressed (RFC 7692 section 6)
        assert sent[small_window.conn][0] != same[0] and sent[small_window.conn][0][0] & 0x40
        assert not sent[plain.conn][0][0] & 0x40
        assert len(same[0]) < len(BIG) / 2
        for client in everyone:
            assert client.messages[-1] == BIG  # each client inflates it back

    def test_a_message_under_the_threshold_goes_uncompressed(self) -> None:
        h = deflate_harness()
        client = connect(h, "k", PerMessageDeflate())
        h.hub.broker.publish(h.hub._channels.groups_new("k"), b'["g"]')
        h.run()
        mark = h.mark()
        h.hub.broker.publish(h.hub._channels.group_data("g"), b"short")
        h.run()
        (frame,) = frames_to(h, client, mark)
        assert not frame[0] & 0x40 and client.messages[-1] == "short"

    def test_the_shared_encoder_keeps_no_context(self) -> None:
        """Two identical messages compress to identical bytes: nothing carried from the first."""
        compressor = Compressor(threshold=0)
        assert compressor.frame(BIG, 15) == compressor.frame(BIG, 15)


class TestInbound:
    def test_a_client_s_compressed_message_is_published_inflated(self) -> None:
        h = deflate_harness()
        client = connect(h, "k", PerMessageDeflate())
        assert client.ws is not None
        h.client_data(client.conn, client.ws.send(TextMessage(data=BIG)))
        h.run()
        assert h.hub.stats.messages_in == 1

    def test_a_compression_bomb_is_closed_with_1009_before_it_is_inflated_whole(self) -> None:
        """RFC 7692 section 8.1 (security): 1 MiB of zeros deflates to about 1 KiB; the limit is 64 KiB."""
        h = deflate_harness()
        client = connect(h, "k", PerMessageDeflate())
        assert client.ws is not None
        bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = bomb.compress(b"\0" * (1 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)[:-4]
        assert len(payload) < 2048
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        header = bytes([0x80 | 0x40 | 0x2, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask
        h.client_data(client.conn, header + masked)
        h.run()
        assert (client.close_code, client.close_reason) == (1009, "message over 65536 bytes")
        assert h.hub.stats.messages_in == 0

    def test_no_decompressor_is_kept_between_messages(self) -> None:
        deflate = BoundedDeflate(max_message_size=1 << 16)
        deflate.accept("permessage-deflate")
        server = WSConnection(ConnectionType.SERVER)
        client = WSConnection(ConnectionType.CLIENT)
        offer = PerMessageDeflate()
        server.receive_data(client.send(Request(host="h", target="/", extensions=[offer])))
        request = next(server.events())
        client.receive_data(server.send(AcceptConnection(extensions=[deflate])))
        list(client.events())
        server.receive_data(client.send(TextMessage(data=BIG)))
        assert [e.data for e in server.events()] == [BIG]
        assert deflate._decompressor is None and deflate._compressor is None
        assert request is not None
