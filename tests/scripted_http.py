"""A loopback HTTP peer that answers each request with the next scripted reply, byte for byte.

For the replies a framework would not send (a chunked body with extensions and trailers, an
interim 100, an HTTP/1.0 body ended by the close, a malformed header line) and for what a
connection goes through: it records every request as received and counts the connections.

Usage::

    with ScriptedPeer([reply(200, b"{}"), (reply(200, b"{}"), CLOSE)]) as peer:
        ...  # POST to peer.url; peer.requests holds what arrived, peer.connections how many
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Literal

__all__ = ["CLOSE", "KEEP", "ScriptedPeer", "reply"]

KEEP: Literal["keep"] = "keep"
CLOSE: Literal["close"] = "close"
"""After the reply: keep the connection open, or close it (whatever the reply says)."""
Step = bytes | tuple[bytes, Literal["keep", "close"]]


def reply(status: int, body: bytes, *fields: str, length: bool = True) -> bytes:
    """An HTTP/1.1 reply: the status line, ``fields`` (``"Name: value"``), Content-Length."""
    lines = [f"HTTP/1.1 {status} Status", *fields]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head + b"\r\n\r\n" + body


class ScriptedPeer:
    """Answers the n-th request (on any connection) with ``script[n]``; closes past the end."""

    def __init__(self, script: list[Step]) -> None:
        self.script = list(script)
        self.requests: list[bytes] = []
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}/fhir"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._current: socket.socket | None = None
        self._stopping = False

    def __enter__(self) -> ScriptedPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping = True
        # Wakes the accept() or recv() the thread waits in (closing alone does not, on Linux).
        for sock in (self._server, self._current):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._server.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            if self._stopping:
                conn.close()
                return
            self.connections += 1
            self._current = conn
            with conn:
                self._answer(conn)
            self._current = None

    def _answer(self, conn: socket.socket) -> None:
        while True:
            try:
                request = _read_request(conn)
            except OSError:
                return
            if request is None or not self.script:
                return
            self.requests.append(request)
            step = self.script.pop(0)
            data, then = step if isinstance(step, tuple) else (step, KEEP)
            conn.sendall(data)
            if then == CLOSE:
                return
