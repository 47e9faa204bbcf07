"""Server-side TLS for the trio shell's clients: what ``trio.SSLStream`` does, plus a close that can linger.

``trio.SSLStream`` has two ways to close: ``aclose()`` sends close_notify and
closes the socket at once (a client still sending gets a reset, which can
overtake the close frame), and ``unwrap()`` sends close_notify and then waits
for the peer's in ``SSL_shutdown``, which OpenSSL 3 fails on the first record
of application data the peer sent after ours (APPLICATION_DATA_AFTER_CLOSE_NOTIFY):
exactly what a client still sending sends. ``SSL_read`` after our close_notify
is allowed ("the peer is still allowed to send data after receiving the
close_notify event", SSL_shutdown(3)), so this stream's ``send_eof`` sends
close_notify and then the transport's FIN, and ``receive_some`` goes on
decrypting (and the shell discarding) until the peer's close_notify (``b""``)
or its EOF. It serves the accepted side only; links dial with ``trio.SSLStream``.

Rules:
1. At every ``await`` no complete record waits undecrypted in the incoming
   BIO: what one transport read brought is decrypted before anything else
   (``SSL_read`` returns one record per call, so it is called until it wants
   more), into a plaintext buffer. Python's ``SSLObject.unwrap()`` calls
   ``SSL_shutdown`` a second time, which reads that BIO: a partial record
   there only makes it want more and is left to ``SSL_read``; a complete
   application record would fail the close as above.
2. Bytes leave in the order the SSL object wrote them: the outgoing BIO is
   read under the send lock, by whichever task holds it.
3. It times nothing: the core's abort at ``writeWait`` bounds a handshake, a
   send and the linger; the shell cancels the tasks and closes the socket.
4. One reader and one sender, as the shell runs them. The reader does the
   handshake; a send waits for it. TLS 1.3 session tickets wait for the first
   send, as in ``trio.SSLStream`` (OpenSSL issues 7948 and 7967). OpenSSL 3
   refuses client-initiated renegotiation by default, so a send never has to
   read.
5. Errors are trio's: an ``SSLError`` (a failed handshake, a bad record, an
   EOF without close_notify) is a ``BrokenResourceError`` caused by it.
"""

from __future__ import annotations

import ssl

import trio

__all__ = ["TLSStream"]


class TLSStream(trio.abc.HalfCloseableStream):
    """TLS over one accepted ``SocketStream``; ``send_eof`` is close_notify then FIN, and reading goes on."""

    def __init__(self, transport: trio.SocketStream, context: ssl.SSLContext, *, read_size: int) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._read_size = read_size  # the most one transport read takes
        self._plain = bytearray()  # decrypted, not yet returned (rule 1 decrypts more than one read may return)
        self._handshaken = trio.Event()
        self._delayed = b""  # TLS 1.3 session tickets, sent ahead of our first bytes (rule 4)
        self._send_lock = trio.Lock()
        self._peer_closed = False  # the peer's close_notify was read
        self._shut = False  # our close_notify is written
        self._broken = False  # a send was cut short: the byte stream is lost

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Decrypted bytes; ``b""`` after the peer's close_notify. Goes on after ``send_eof`` (the linger)."""
        limit = self._read_size if max_bytes is None else max_bytes
        if limit < 1:
            raise ValueError("max_bytes must be >= 1")
        self._check()
        checkpointed = False
        while not self._plain and not self._peer_closed:
            try:
                if not self._handshaken.is_set():
                    self._handshake()
                self._decrypt()
            except (ssl.SSLError, ssl.CertificateError) as exc:
                self._broken = True
                raise trio.BrokenResourceError from exc
            if self._outgoing.pending:  # the handshake's flights, or an answer a record asked for
                await self._flush()  # only this task fills the incoming BIO: rule 1 still holds after it
                checkpointed = True
            if self._plain or self._peer_closed:
                break
            raw = await self.transport.receive_some(self._read_size)
            checkpointed = True
            if raw:
                self._incoming.write(raw)
            else:
                self._incoming.write_eof()  # the next SSL_read fails: an EOF without close_notify (rule 5)
        if not checkpointed:
            await trio.lowlevel.checkpoint()
        data = bytes(self._plain[:limit])
        del self._plain[:limit]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._shut:
            raise trio.ClosedResourceError("send_eof was called")
        self._check()
        await self._handshaken.wait()
        try:
            view = memoryview(data)
            while view:
                view = view[self._tls.write(view):]
        except ssl.SSLError as exc:
            self._broken = True
            raise trio.BrokenResourceError from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Our close_notify, then the transport's FIN: TLS's half-close. ``receive_some`` still reads."""
        self._check()
        await self._handshaken.wait()
        if not self._shut:
            self._shut = True
            try:
                self._tls.unwrap()  # SSL_shutdown: writes close_notify, then (Python) once more, which reads
            except ssl.SSLWantReadError:
                pass  # that second call waits for the peer's close_notify: receive_some's SSL_read reads it
            except ssl.SSLError as exc:
                self._broken = True
                raise trio.BrokenResourceError from exc
            await self._flush()
        await self.transport.send_eof()

    async def aclose(self) -> None:
        """Close the socket at once, as ``trio.SSLStream`` does when ``https_compatible``: a graceful close
        is ``send_eof`` first, then reading to the end."""
        await self.transport.aclose()

    def _check(self) -> None:
        if self._broken:
            raise trio.BrokenResourceError("TLS stream broken")

    def _handshake(self) -> None:
        """One step of the handshake; once done, everything already received is decrypted in the same step."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return
        if self._tls.version() == "TLSv1.3":
            self._delayed = self._outgoing.read()  # the session tickets (rule 4)
        self._handshaken.set()

    def _decrypt(self) -> None:
        """Every complete record received, into ``_plain`` (rule 1); ``_peer_closed`` at its close_notify."""
        if not self._handshaken.is_set():
            return
        while True:
            try:
                chunk = self._tls.read(self._read_size)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:  # after our close_notify too (Python returns b"" only before it)
                chunk = b""
            if not chunk:
                self._peer_closed = True
                return
            self._plain += chunk

    async def _flush(self) -> None:
        """Send what the SSL object wrote, in its order (rule 2); a send cut short breaks the stream."""
        async with self._send_lock:
            data = self._outgoing.read()
            if not data:
                return
            if self._delayed:
                data, self._delayed = self._delayed + data, b""
            try:
                await self.transport.send_all(data)
            except BaseException:
                self._broken = True
                raise
