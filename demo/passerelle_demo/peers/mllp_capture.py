"""A built-in MLLP capture endpoint: the "legacy lab system" subscriber of the demo and tests.

It records every message it receives and answers as its ``mode`` says, which tests change at run
time to simulate a receiver that errors, rejects or hangs. Each record keeps the answer it got,
so a test can tell a message the receiver *accepted* (answered AA) from one it refused (AE, AR)
or left unanswered: only the first is delivered. It sits in the benchmark's hot path, so it reads
only the MSH line of each message.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final, Literal, get_args

from broker.ack import build_ack
from broker.adapters.mllp import DEFAULT_MAX_BYTES, MllpServer
from broker.errors import HL7v2ParseError
from broker.log import get_logger
from broker.parsing.hl7v2 import Message, decode, parse

__all__ = ["CaptureMode", "CapturedMessage", "MllpCapture"]

CaptureMode = Literal["ack", "error", "reject", "silent"]
"""``ack`` answers AA, ``error`` AE, ``reject`` AR, ``silent`` nothing (the sender times out)."""

_CODES: Final[dict[str, str]] = {"ack": "AA", "error": "AE", "reject": "AR"}
_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CapturedMessage:
    """One received message.

    Attributes:
        received_at: when the frame was complete (UTC).
        control_id: MSH-10, ``""`` when the payload was not readable HL7.
        text: the decoded message as received.
        answer: the acknowledgment code the capture answered (``AA``, ``AE``, ``AR``), ``None``
            when it answered nothing (``silent``).
    """

    received_at: datetime
    control_id: str
    text: str
    answer: str | None = None

    @property
    def accepted(self) -> bool:
        """True when the capture answered AA: the one answer that makes a message delivered."""
        return self.answer == "AA"


class MllpCapture:
    """An MLLP listener that records what it receives and answers by ``mode``.

    Use ``await start()`` / ``await aclose()`` inside a running event loop, or
    ``start_in_thread()`` / ``stop()`` from synchronous code (it then runs its own loop in a
    daemon thread).

    Args:
        host: the interface to bind.
        port: the TCP port; 0 picks a free one.
        mode: how to answer (see ``CaptureMode``); may be changed while running.
        journal: a file to which one JSON line (control id and received time, never the body)
            is appended per message, for the demo's counts.
        name: a label for logs.
        max_bytes: the largest message accepted.
        tls: a server ``ssl.SSLContext``: the capture then speaks MLLP over TLS.

    Attributes:
        observer: called with each message once it is recorded (``passerelle capture mllp``
            prints it); runs on the capture's event loop, so it must be quick.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        mode: CaptureMode = "ack",
        journal: str | Path | None = None,
        name: str = "mllp-capture",
        max_bytes: int = DEFAULT_MAX_BYTES,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.mode = mode
        self.name = name
        self.observer: Callable[[CapturedMessage], None] | None = None
        self._journal_path = Path(journal) if journal is not None else None
        self._journal: IO[str] | None = None
        self._server = MllpServer(host, port, self._handle, max_bytes=max_bytes, name=name, tls=tls)
        self._records: list[CapturedMessage] = []
        self._unique: set[str] = set()
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def mode(self) -> CaptureMode:
        """How the next message is answered."""
        return self._mode

    @mode.setter
    def mode(self, value: CaptureMode) -> None:
        if value not in get_args(CaptureMode):
            msg = f"{value!r} is not a capture mode; expected one of {get_args(CaptureMode)}"
            raise ValueError(msg)
        self._mode = value

    @property
    def host(self) -> str:
        """The bound interface."""
        return self._server.host

    @property
    def port(self) -> int:
        """The bound port."""
        return self._server.port

    @property
    def messages(self) -> list[CapturedMessage]:
        """A snapshot of every message received, in arrival order."""
        with self._changed:
            return list(self._records)

    @property
    def count(self) -> int:
        """How many messages were received, duplicates included."""
        with self._changed:
            return len(self._records)

    @property
    def unique_count(self) -> int:
        """How many distinct MSH-10 control ids were received."""
        with self._changed:
            return len(self._unique)

    def control_ids(self) -> list[str]:
        """The MSH-10 of every message received, in arrival order, refused ones included."""
        with self._changed:
            return [r.control_id for r in self._records]

    @property
    def accepted(self) -> list[CapturedMessage]:
        """The messages answered AA, in arrival order (a receiver keeps only these)."""
        with self._changed:
            return [r for r in self._records if r.accepted]

    @property
    def refused(self) -> list[CapturedMessage]:
        """The messages answered AE or AR or left unanswered, in arrival order."""
        with self._changed:
            return [r for r in self._records if not r.accepted]

    def accepted_ids(self) -> list[str]:
        """The MSH-10 of every message answered AA, in arrival order, repeats kept."""
        with self._changed:
            return [r.control_id for r in self._records if r.accepted]

    def refused_ids(self) -> list[str]:
        """The MSH-10 of every message answered AE or AR or not at all, in arrival order."""
        with self._changed:
            return [r.control_id for r in self._records if not r.accepted]

    def clear(self) -> None:
        """Forget every message received so far (the journal file is kept)."""
        with self._changed:
            self._records.clear()
            self._unique.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` messages were received; ``False`` on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._records) >= count, timeout)

    async def start(self) -> None:
        """Start listening in the running event loop."""
        if self._journal_path is not None:
            self._journal_path.parent.mkdir(parents=True, exist_ok=True)
            self._journal = self._journal_path.open("a", encoding="utf-8")
        await self._server.start()

    async def aclose(self) -> None:
        """Stop listening and close the journal file."""
        await self._server.stop()
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def start_in_thread(self) -> tuple[str, int]:
        """Start on a private event loop in a daemon thread; return ``(host, port)``."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"{self.name}-loop", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._loop = self._thread = None
            raise failure[0]
        return self.host, self.port

    def stop(self) -> None:
        """Stop a capture started with ``start_in_thread`` and join its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.aclose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._loop = self._thread = None

    async def _handle(self, payload: bytes, peer: str) -> bytes | None:
        received_at = datetime.now(UTC)
        try:
            text = decode(payload)
        except HL7v2ParseError:
            text = payload.decode("latin-1")
        request = _read_header(text)
        control_id = request.control_id if request is not None else ""
        mode = self._mode
        code = None if mode == "silent" else _CODES[mode] if request is not None else "AR"
        record = CapturedMessage(received_at, control_id, text, code)
        with self._changed:
            self._records.append(record)
            if control_id:
                self._unique.add(control_id)
            self._changed.notify_all()
        if self._journal is not None:
            line = {"control_id": control_id, "received_at": received_at.isoformat()}
            self._journal.write(json.dumps(line) + "\n")
            self._journal.flush()
        if self.observer is not None:
            self.observer(record)
        if code is None:
            return None
        text_out = "" if code == "AA" else f"capture endpoint {self.name} answers {code}"
        ack = build_ack(code, request, text=text_out, error_code=None if code == "AA" else "207")
        return ack.encode("utf-8")


def _read_header(text: str) -> Message | None:
    # Tokenizing only the MSH line keeps the cost flat however long the message is.
    start = text.find("MSH")
    if start < 0:
        return None
    end = len(text)
    for stop in ("\r", "\n"):
        pos = text.find(stop, start)
        if 0 <= pos < end:
            end = pos
    try:
        return parse(text[start:end])
    except HL7v2ParseError:
        return None
