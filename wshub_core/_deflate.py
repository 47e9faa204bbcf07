"""permessage-deflate (RFC 7692) through wsproto's extension, negotiated so a broadcast is compressed once.

The hub offers no choice that would make two clients need different bytes for
one message, except the one RFC 7692 gives the client: ``server_max_window_bits``.
Every connection is accepted with ``server_no_context_takeover`` (each message
is compressed on its own, from an empty window) and ``client_no_context_takeover``
(the client's messages too), so:

1. A group message is compressed once per window size in use among its
   members (almost always one: 15) and the same bytes go to all of them
   (``Compressor.frame``); no connection keeps a compressor.
2. No connection keeps a decompressor between messages either: an idle
   compressed connection costs what an uncompressed one does, plus the
   extension object.
3. A client message is inflated at most to ``webSocket.maxMessageSize`` plus
   one byte: a compression bomb is closed with 1009 before it is inflated whole
   (wsproto's own extension inflates without a bound).
"""

from __future__ import annotations

import zlib

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol

__all__ = ["BoundedDeflate", "Compressor"]


class BoundedDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate for one server connection: both sides without context takeover, inflation
    bounded by the message size limit."""

    def __init__(self, *, max_message_size: int) -> None:
        super().__init__(client_no_context_takeover=True, server_no_context_takeover=True)
        self._max_message_size = max_message_size
        self._inflated = 0  # bytes of the current message inflated so far

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol, data: bytes) -> bytes | CloseReason:
        """Inflate at most one byte over the limit: what is over it is never produced (rule 3)."""
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        room = self._max_message_size - self._inflated + 1
        try:
            out = self._decompressor.decompress(bytes(data), room)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self._max_message_size or self._decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol, fin: bool) -> bytes | CloseReason | None:
        """The message's end: its count starts over (wsproto drops the decompressor: no context takeover)."""
        result = super().frame_inbound_complete(proto, fin)
        if fin:
            self._inflated = 0
        return result


class Compressor:
    """One shared encoder per window size: a message's compressed frame, the same bytes for every client."""

    __slots__ = ("_encoders", "threshold")

    def __init__(self, *, threshold: int) -> None:
        """Messages shorter than ``threshold`` bytes are sent uncompressed (they would barely shrink)."""
        self._encoders: dict[int, FrameProtocol] = {}
        self.threshold = threshold

    def frame(self, message: str | bytes, bits: int) -> bytes:
        """``message`` (text if a str) as one compressed frame for clients whose server window is ``bits``."""
        encoder = self._encoders.get(bits)
        if encoder is None:
            extension = PerMessageDeflate(server_no_context_takeover=True)
            extension.accept(f"permessage-deflate; server_max_window_bits={bits}")  # enabled, as negotiated
            encoder = self._encoders[bits] = FrameProtocol(client=False, extensions=[extension])
        return bytes(encoder.send_data(message, fin=True))


def window_bits(extensions: list[object]) -> int | None:
    """The server window a connection negotiated, or None if it did not negotiate compression."""
    for extension in extensions:
        if isinstance(extension, BoundedDeflate) and extension.enabled():
            return extension.server_max_window_bits
    return None
