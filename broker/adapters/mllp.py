"""MLLP framing (HL7 MLLP release 2): a sans-IO decoder, an asyncio listener and two clients.

A block is ``<VT> payload <FS><CR>`` (0x0B … 0x1C 0x0D; HL7 v2.5.1 Appendix C, MLLP release 2).
This module moves bytes only; it never parses HL7, so the payload's meaning (and its ACK) is the
caller's business. Nothing here logs a payload.

Exceptions (transport-level; the delivery layer maps them to ``RetryableDeliveryError``)::

    MllpError
    ├── MllpTimeout          no complete reply frame within the client's timeout
    └── MllpConnectionError  cannot connect, or the connection broke before the reply
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import select
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

from broker.log import get_logger

__all__ = [
    "CARRIAGE_RETURN",
    "END_BLOCK",
    "START_BLOCK",
    "AsyncMllpClient",
    "Frame",
    "FrameDecoder",
    "Handler",
    "MllpClient",
    "MllpConnectionError",
    "MllpError",
    "MllpServer",
    "MllpTimeout",
    "OversizeHandler",
    "frame",
]

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c"
CARRIAGE_RETURN: Final = b"\x0d"
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024

_VT, _FS, _CR = 0x0B, 0x1C, 0x0D
_SPECIAL = re.compile(b"[\x0b\x1c]")
_READ_SIZE = 64 * 1024
_HANDSHAKE_S = 20.0
"""Seconds a peer has to finish the TLS handshake of an inbound connection."""

Handler = Callable[[bytes, str], Awaitable[bytes | None]]
"""``handler(payload, peer)`` returns the reply payload to frame and send, or ``None``."""

_log = get_logger(__name__)


class MllpError(Exception):
    """Base of the MLLP transport errors."""


class MllpTimeout(MllpError):
    """Raised when no complete reply frame arrived within the client's timeout."""


class MllpConnectionError(MllpError):
    """Raised when the peer cannot be reached or the connection broke before the reply."""


def frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in an MLLP block: ``<VT> payload <FS><CR>``."""
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete MLLP block.

    Attributes:
        payload: the bytes between the start and end characters; at most ``max_bytes`` of them.
        oversize: the payload exceeded ``max_bytes``. It was read to its end, but ``payload``
            holds only its first ``max_bytes`` bytes (enough to read MSH for an AR).
        size: for an over-size frame, the whole payload's size in bytes (else ``None``).
        sha256: for an over-size frame, the hex SHA-256 of the whole payload (else ``None``):
            what is kept of it can still be matched with the sender's copy.
    """

    payload: bytes
    oversize: bool = False
    size: int | None = None
    sha256: str | None = None


OversizeHandler = Callable[[Frame, str], Awaitable[bytes | None]]
"""``on_oversize(frame, peer)``: answer an over-size frame (truncated payload, size, digest)."""


class FrameDecoder:
    """Incremental, sans-IO MLLP decoder: feed it bytes as they arrive, get complete frames.

    Rules: bytes before a start character are discarded and counted in ``skipped``. A start
    character inside an unfinished frame abandons that frame (its bytes are counted in
    ``skipped`` too) and starts a new one, because a sender that restarts never finishes the
    first. ``<FS>`` not followed by ``<CR>`` is payload. A frame longer than ``2 * max_bytes``
    sets ``overflowed``; the decoder then ignores all further input and the connection should
    be closed.

    Args:
        max_bytes: the largest payload delivered whole; longer ones are flagged ``oversize``.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = max_bytes
        self.skipped = 0
        self.overflowed = False
        self._in_frame = False
        self._pending_fs = False
        self._buf = bytearray()
        self._size = 0
        # Hashing starts only once a frame passes max_bytes: in-size frames cost nothing more.
        self._hash: hashlib._Hash | None = None

    @property
    def in_frame(self) -> bool:
        """A start character was read and its frame is not finished yet."""
        return self._in_frame

    @property
    def pending(self) -> int:
        """Bytes of the unfinished frame read so far (0 when between frames)."""
        return self._size + self._pending_fs if self._in_frame else 0

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data`` and return the frames it completed, in order."""
        frames: list[Frame] = []
        i, n = 0, len(data)
        while i < n and not self.overflowed:
            if not self._in_frame:
                start = data.find(START_BLOCK, i)
                if start < 0:
                    self.skipped += n - i
                    break
                self.skipped += start - i
                self._begin()
                i = start + 1
                continue
            if self._pending_fs:
                self._pending_fs = False
                if data[i] == _CR:
                    frames.append(self._finish())
                    i += 1
                    continue
                self._append(END_BLOCK)
            match = _SPECIAL.search(data, i)
            if match is None:
                self._append(data[i:])
                break
            j = match.start()
            self._append(data[i:j])
            if data[j] == _VT:
                self.skipped += 1 + self._size
                self._begin()
                i = j + 1
            elif j + 1 == n:
                self._pending_fs = True
                i = n
            elif data[j + 1] == _CR:
                frames.append(self._finish())
                i = j + 2
            else:
                self._append(END_BLOCK)
                i = j + 1
        return frames

    def _begin(self) -> None:
        self._in_frame = True
        self._pending_fs = False
        self._buf.clear()
        self._size = 0
        self._hash = None

    def _append(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > 2 * self.max_bytes:
            self.overflowed = True
            self._buf.clear()
            self._hash = None
            return
        room = self.max_bytes - len(self._buf)
        if room > 0:
            self._buf += chunk[:room]
        if self._hash is not None:
            self._hash.update(chunk)
        elif self._size > self.max_bytes:
            self._hash = hashlib.sha256(self._buf)
            self._hash.update(chunk[room:] if room > 0 else chunk)

    def _finish(self) -> Frame:
        if self._hash is not None:
            result = Frame(
                bytes(self._buf), oversize=True, size=self._size, sha256=self._hash.hexdigest()
            )
        else:
            result = Frame(bytes(self._buf))
        self._in_frame = False
        self._buf.clear()
        self._size = 0
        self._hash = None
        return result


class MllpServer:
    """An asyncio MLLP listener serving many connections, each answered in order.

    Each received frame is passed to ``handler(payload, peer)``; a non-``None`` result is framed
    and sent back. A handler that raises is logged and answered with nothing; the connection and
    the listener stay up. Frames over ``max_bytes`` go to ``on_oversize(frame, peer)`` instead,
    truncated but with the whole payload's size and SHA-256 (the broker answers AR from the
    truncated MSH); with no ``on_oversize`` they are logged and not answered. A frame longer
    than ``2 * max_bytes`` closes its connection.

    Args:
        host: the interface to bind.
        port: the TCP port; 0 picks a free one (read it back from ``port`` after ``start``).
        handler: called once per complete, in-size frame.
        max_bytes: the largest payload passed to ``handler``.
        name: a label for logs (the adapter id).
        on_oversize: called once per frame between ``max_bytes`` and ``2 * max_bytes``.
        on_connections: called (no I/O: it must not block) each time a connection opens or
            closes; :attr:`connections` then has the new count.
        tls: the server context of MLLP over TLS (``broker.adapters.tls``); ``None``: plain TCP.
            A failed handshake is logged (``mllp.tls_failed``) and its connection closed.
        admit: ``admit(ip)`` tells whether a peer may connect (the adapter's ``allow_from``);
            a refused one is logged (``mllp.refused_peer``) and closed before a byte is read.
        max_connections: a connection beyond this many open ones is closed at once (logged);
            ``None``: no cap.
        idle_timeout_s: a connection that starts no frame for this long is closed (logged);
            ``None``: never.
        read_timeout_s: a frame not finished this long after its start character closes its
            connection (logged); ``None``: never.
        on_refused: called (no I/O: it must not block) with ``not_allowed``,
            ``connection_cap`` or ``tls_handshake`` each time a connection is refused for that
            reason (the listener counts them for ``/metrics``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        name: str = "",
        on_oversize: OversizeHandler | None = None,
        on_connections: Callable[[], None] | None = None,
        tls: ssl.SSLContext | None = None,
        admit: Callable[[str], bool] | None = None,
        max_connections: int | None = None,
        idle_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.tls = tls
        self.on_refused = on_refused
        self.admit = admit
        self.refused = 0
        """Connections refused by ``admit`` since the server was built."""
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.read_timeout_s = read_timeout_s
        self.on_connections = on_connections
        self.handler = handler
        self.on_oversize = on_oversize
        self.max_bytes = max_bytes
        self.name = name
        self._port = port
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._idle: dict[asyncio.Task[None], bool] = {}

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0 and started)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def connections(self) -> int:
        """How many peers hold a connection open now."""
        return len(self._idle)

    def _refused(self, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused(reason)

    def _connections_changed(self) -> None:
        if self.on_connections is not None:
            self.on_connections()

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._stopping = False
        # TLS is started per connection (StreamWriter.start_tls), not by start_server(ssl=...):
        # a refused peer is then closed before any handshake, and a failed handshake is ours
        # to log (asyncio reports those only in debug mode).
        self._server = await asyncio.start_server(self._serve, self.host, self._port)
        _log.info(
            "mllp.listening",
            adapter=self.name,
            host=self.host,
            port=self.port,
            tls=self.tls is not None,
        )

    async def stop(self) -> None:
        """Stop accepting, let handlers already running finish, then close every connection."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task, idle in list(self._idle.items()):
            if idle:
                task.cancel()
        await asyncio.gather(*self._idle, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        _log.info("mllp.stopped", adapter=self.name)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        address = writer.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        if self.admit is not None and not (
            isinstance(address, tuple) and self.admit(str(address[0]))
        ):
            self.refused += 1
            self._refused("not_allowed")
            _log.warning("mllp.refused_peer", adapter=self.name, peer=peer)
            writer.transport.abort()
            return
        if self.max_connections is not None and len(self._idle) >= self.max_connections:
            self._refused("connection_cap")
            _log.warning(
                "mllp.connection_refused", adapter=self.name, peer=peer, cap=self.max_connections
            )
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return
        decoder = FrameDecoder(self.max_bytes)
        self._idle[task] = True
        self._connections_changed()
        if self.tls is not None and not await self._start_tls(writer, peer, task):
            return
        frame_started: float | None = None
        try:
            while not self._stopping:
                timeout, why, limit = self.idle_timeout_s, "mllp.idle_timeout", self.idle_timeout_s
                if decoder.in_frame and self.read_timeout_s is not None:
                    frame_started = frame_started or time.monotonic()
                    limit = self.read_timeout_s
                    timeout = limit - (time.monotonic() - frame_started)
                    why = "mllp.read_timeout"
                elif not decoder.in_frame:
                    frame_started = None
                try:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(_READ_SIZE)
                except TimeoutError:
                    _log.warning(why, adapter=self.name, peer=peer, after_s=limit)
                    break
                if not data:
                    break
                self._idle[task] = False
                for received in decoder.feed(data):
                    reply = await self._dispatch(received, peer)
                    if reply is not None:
                        writer.write(frame(reply))
                        await writer.drain()
                    if self._stopping:
                        break
                self._idle[task] = True
                if decoder.overflowed:
                    _log.warning(
                        "mllp.frame_too_large",
                        adapter=self.name,
                        peer=peer,
                        limit=2 * self.max_bytes,
                    )
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._idle.pop(task, None)
            self._connections_changed()
            if decoder.skipped or decoder.pending:
                _log.warning(
                    "mllp.bytes_discarded",
                    adapter=self.name,
                    peer=peer,
                    skipped=decoder.skipped,
                    unfinished=decoder.pending,
                )
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _start_tls(
        self, writer: asyncio.StreamWriter, peer: str, task: asyncio.Task[None]
    ) -> bool:
        """Run the server side of the TLS handshake; False (logged, closed) when it fails."""
        assert self.tls is not None
        try:
            await writer.start_tls(self.tls, ssl_handshake_timeout=_HANDSHAKE_S)
        except BaseException as exc:
            # start_tls has closed the transport; the stream's own close would never complete
            # (its protocol never saw the TLS connection made), so nothing is awaited here.
            writer.transport.abort()
            self._idle.pop(task, None)
            self._connections_changed()
            if not isinstance(exc, OSError | TimeoutError):
                raise
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self._refused("tls_handshake")
            _log.warning("mllp.tls_failed", adapter=self.name, peer=peer, reason=reason)
            return False
        cert = writer.get_extra_info("peercert") or {}
        subject = dict(pair[0] for pair in cert.get("subject", ()))
        _log.debug(
            "mllp.tls_established",
            adapter=self.name,
            peer=peer,
            version=writer.get_extra_info("ssl_object").version(),
            client=subject.get("commonName"),
        )
        return True

    async def _dispatch(self, received: Frame, peer: str) -> bytes | None:
        on_oversize = self.on_oversize
        if received.oversize and on_oversize is None:
            _log.warning(
                "mllp.oversize_dropped", adapter=self.name, peer=peer, limit=self.max_bytes
            )
            return None
        try:
            if on_oversize is not None and received.oversize:
                return await on_oversize(received, peer)
            return await self.handler(received.payload, peer)
        except Exception:
            _log.exception("mllp.handler_failed", adapter=self.name, peer=peer)
            return None


def _take_reply(decoder: FrameDecoder, data: bytes, peer: str) -> bytes | None:
    if not data:
        msg = f"{peer} closed the connection before replying"
        raise MllpConnectionError(msg)
    frames = decoder.feed(data)
    if frames:
        return frames[0].payload
    if decoder.overflowed:
        msg = f"{peer} sent a reply longer than {2 * decoder.max_bytes} bytes"
        raise MllpConnectionError(msg)
    return None


class MllpClient:
    """A synchronous MLLP client on one persistent connection, reconnecting when it breaks.

    Any error closes the socket, so the next ``send`` opens a new connection. Matching the reply
    to the request (MSA-2) is the caller's job.

    Args:
        host: the peer's host.
        port: the peer's port.
        timeout: seconds for connecting (TLS handshake included) and, separately, for the
            whole reply.
        max_bytes: the largest reply accepted.
        tls: the client context of MLLP over TLS (``TlsSpec.client_context``); ``None``:
            plain TCP.
        server_name: the name the server's certificate must carry (and SNI), when not ``host``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.tls = tls
        self.server_name = server_name
        self._peer = f"{host}:{port}"
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder(max_bytes)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send(self, payload: bytes) -> bytes:
        """Frame and send ``payload``, then wait for one reply frame and return its payload.

        Raises:
            MllpTimeout: no complete reply within ``timeout`` seconds.
            MllpConnectionError: the connection failed or closed before the reply.
        """
        sock = self._connected()
        try:
            sock.sendall(frame(payload))
            deadline = time.monotonic() + self.timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                reply = _take_reply(self._decoder, sock.recv(_READ_SIZE), self._peer)
                if reply is not None:
                    return reply
        except TimeoutError as exc:
            self.close()
            msg = f"no MLLP reply from {self._peer} within {self.timeout} s"
            raise MllpTimeout(msg) from exc
        except OSError as exc:
            self.close()
            msg = f"MLLP connection to {self._peer} failed: {exc}"
            raise MllpConnectionError(msg) from exc
        except MllpError:
            self.close()
            raise

    def post(self, payload: bytes) -> None:
        """Frame and send ``payload`` without waiting for a reply (an ACK is not acknowledged).

        Raises:
            MllpConnectionError: the connection failed.
        """
        sock = self._connected()
        try:
            sock.sendall(frame(payload))
        except OSError as exc:
            self.close()
            msg = f"sending to {self._peer} failed: {exc}"
            raise MllpConnectionError(msg) from exc

    def close(self) -> None:
        """Close the connection, if open; the next ``send`` reconnects."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        self._decoder = FrameDecoder(self.max_bytes)

    def _connected(self) -> socket.socket:
        if self._sock is not None and self._is_stale(self._sock):
            self.close()
        if self._sock is None:
            try:
                sock = socket.create_connection((self.host, self.port), self.timeout)
            except TimeoutError as exc:
                msg = f"connecting to {self._peer} timed out after {self.timeout} s"
                raise MllpTimeout(msg) from exc
            except OSError as exc:
                msg = f"cannot connect to MLLP peer {self._peer}: {exc}"
                raise MllpConnectionError(msg) from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self._handshake(sock)
            self._sock = sock
        return self._sock

    def _handshake(self, sock: socket.socket) -> socket.socket:
        assert self.tls is not None
        try:
            return self.tls.wrap_socket(sock, server_hostname=self.server_name or self.host)
        except TimeoutError as exc:
            sock.close()
            msg = f"the TLS handshake with {self._peer} timed out after {self.timeout} s"
            raise MllpTimeout(msg) from exc
        except OSError as exc:
            sock.close()
            msg = f"the TLS handshake with MLLP peer {self._peer} failed: {exc}"
            raise MllpConnectionError(msg) from exc

    @staticmethod
    def _is_stale(sock: socket.socket) -> bool:
        # Between exchanges nothing should be readable; readable means the peer closed the idle
        # connection (or sent stray bytes), and reusing it would lose the next message.
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class AsyncMllpClient:
    """The asyncio twin of ``MllpClient``: one persistent connection, sends serialised.

    Args:
        host: the peer's host.
        port: the peer's port.
        timeout: seconds for connecting (TLS handshake included) and, separately, for the
            whole reply.
        max_bytes: the largest reply accepted.
        tls: the client context of MLLP over TLS; ``None``: plain TCP.
        server_name: the name the server's certificate must carry (and SNI), when not ``host``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.tls = tls
        self.server_name = server_name
        self._peer = f"{host}:{port}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder(max_bytes)
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection now (``send`` also opens it when needed).

        Raises:
            MllpTimeout: connecting took longer than ``timeout``.
            MllpConnectionError: the peer cannot be reached.
        """
        if self._writer is not None and not self._is_stale():
            return
        await self.close()
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=(self.server_name or self.host) if self.tls else None,
                ),
                self.timeout,
            )
        except TimeoutError as exc:
            msg = f"connecting to {self._peer} timed out after {self.timeout} s"
            raise MllpTimeout(msg) from exc
        except OSError as exc:
            msg = f"cannot connect to MLLP peer {self._peer}: {exc}"
            raise MllpConnectionError(msg) from exc

    async def send(self, payload: bytes) -> bytes:
        """Frame and send ``payload``, then wait for one reply frame and return its payload.

        Raises:
            MllpTimeout: no complete reply within ``timeout`` seconds.
            MllpConnectionError: the connection failed or closed before the reply.
        """
        async with self._lock:
            await self.connect()
            try:
                return await asyncio.wait_for(self._exchange(payload), self.timeout)
            except TimeoutError as exc:
                await self.close()
                msg = f"no MLLP reply from {self._peer} within {self.timeout} s"
                raise MllpTimeout(msg) from exc
            except OSError as exc:
                await self.close()
                msg = f"MLLP connection to {self._peer} failed: {exc}"
                raise MllpConnectionError(msg) from exc
            except MllpError:
                await self.close()
                raise

    async def close(self) -> None:
        """Close the connection, if open; the next ``send`` reconnects."""
        writer, self._reader, self._writer = self._writer, None, None
        self._decoder = FrameDecoder(self.max_bytes)
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _exchange(self, payload: bytes) -> bytes:
        assert self._reader is not None
        assert self._writer is not None
        self._writer.write(frame(payload))
        await self._writer.drain()
        while True:
            reply = _take_reply(self._decoder, await self._reader.read(_READ_SIZE), self._peer)
            if reply is not None:
                return reply

    def _is_stale(self) -> bool:
        # The loop has already fed EOF to the reader if the peer closed the idle connection;
        # sending on it would fail only after the payload was written.
        assert self._writer is not None
        reader = self._reader
        return self._writer.is_closing() or reader is None or reader.at_eof()
