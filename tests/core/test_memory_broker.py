"""The memory broker: the protocol's channel semantics inside one process, with no link at all.

A backend here is whoever publishes on the broker (the HTTP API does, in the
hub); these tests publish on ``hub.broker`` directly, as the API's handlers do.
"""

from __future__ import annotations

from wshub_core import Hub, SendToClient
from wshub_core._memory_broker import MemoryBroker

from .harness import Harness, make_config


def memory_harness(text: str = "") -> Harness:
    return Harness(make_config("broker: memory\n" + text))


class TestChannelSemantics:
    def test_groups_then_group_data_reach_the_member_and_no_link_is_ever_opened(self) -> None:
        h = memory_harness()
        assert isinstance(h.hub.broker, MemoryBroker)
        assert h.hub.ready  # nothing to wait for
        alice = h.connect("alice")
        bob = h.connect("bob")
        h.hub.broker.publish(b"ws-hub:groups-new:alice", b'["news"]')
        h.run()
        assert h.hub.groups_of(alice.conn) == {"news"}
        h.hub.broker.publish(b"ws-hub:group-data:news", b"hello")
        h.run()
        assert alice.messages == ["hello"]
        assert bob.messages == []
        link_actions = [a for _, a in h.log if "Redis" in type(a).__name__ or "Link" in type(a).__name__]
        assert link_actions == [], "the memory broker emitted a link action"
        assert any(isinstance(a, SendToClient) for _, a in h.log)

    def test_a_message_on_a_channel_nobody_needs_is_dropped(self) -> None:
        h = memory_harness()
        client = h.connect("k")
        h.hub.broker.publish(b"ws-hub:group-data:elsewhere", b"lost")
        h.run()
        assert client.messages == []
        assert "wshub_broker_delivered_total 0" in h.hub.metrics_text()
        assert "wshub_broker_published_total 2" in h.hub.metrics_text()  # client-new, then this one

    def test_leaving_releases_the_channels(self) -> None:
        h = memory_harness()
        client = h.connect("k")
        h.hub.broker.publish(b"ws-hub:groups-new:k", b"a,b")
        h.run()
        assert h.hub.subscribed_channels() == {b"ws-hub:groups-new:k", b"ws-hub:group-data:a", b"ws-hub:group-data:b"}
        client.close()
        h.run()
        assert h.hub.subscribed_channels() == set()
        assert h.hub.is_empty()

    def test_a_second_connection_of_a_key_starts_with_its_groups(self) -> None:
        h = memory_harness()
        first = h.connect("k")
        h.hub.broker.publish(b"ws-hub:groups-new:k", b'["g"]')
        h.run()
        second = h.connect("k")
        h.hub.broker.publish(b"ws-hub:group-data:g", b"both")
        h.run()
        assert first.messages == second.messages == ["both"]

    def test_shutdown_finishes_at_once(self) -> None:
        h = memory_harness()
        h.connect("k")
        h.hub.shutdown(h.now)
        h.run()
        assert [type(a).__name__ for _, a in h.log[-2:]] == ["CloseClient", "Stopped"]


class TestDeliveryIsNeverReentrant:
    def test_a_publish_made_while_delivering_is_delivered_after_it_in_order(self) -> None:
        seen: list[bytes] = []
        broker: MemoryBroker

        def on_message(channel: bytes, payload: bytes) -> None:
            seen.append(payload)
            if payload == b"first":
                broker.publish(b"c", b"third")  # queued: "second" was published before it
                assert seen == [b"first"], "delivered inside the delivery"

        broker = MemoryBroker(on_message=on_message)
        broker.need(b"c")
        broker.publish(b"c", b"first")
        assert seen == [b"first", b"third"]
        seen.clear()

        def publish_two(channel: bytes, payload: bytes) -> None:
            seen.append(payload)
            if payload == b"a":
                broker.publish(b"c", b"b")
                broker.publish(b"c", b"c")

        broker = MemoryBroker(on_message=publish_two)
        broker.need(b"c")
        broker.publish(b"c", b"a")
        assert seen == [b"a", b"b", b"c"]

    def test_a_prefix_need_delivers_every_channel_under_it(self) -> None:
        seen: list[bytes] = []
        broker = MemoryBroker(on_message=lambda channel, payload: seen.append(channel))
        broker.need_prefix(b"p:client-data:")
        broker.publish(b"p:client-data:alice", b"x")
        broker.publish(b"p:client-new", b"x")
        broker.release_prefix(b"p:client-data:")
        broker.publish(b"p:client-data:bob", b"x")
        assert seen == [b"p:client-data:alice"]


def test_a_hub_on_the_memory_broker_is_ready_before_any_input() -> None:
    hub = Hub(config=make_config("broker: memory\n"))
    hub.start(0.0)
    assert hub.ready
    assert hub.actions() == []
    assert hub.next_deadline() is None
