"""A simulated hospital MLLP sender for the demo and the benchmark.

It sends HL7 v2 messages over ``connections`` concurrent MLLP connections, one message at a time
per connection as real interface engines do: send, wait for the ACK, then send the next. It
records each message's ACK code (MSA-1) and ACK latency.

Usage::

    result = send(host, port, [er7 for _, _, er7 in synthetic.stream(1000, seed=1)], connections=4)
    result.acked_by_code      # {"AA": 1000}
    result.percentile(99)     # seconds
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from broker.adapters.mllp import AsyncMllpClient, MllpError, MllpTimeout
from broker.log import get_logger

__all__ = ["MessageOutcome", "SendResult", "ack_code", "patient_key", "send", "send_messages"]

_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """What happened to one message.

    Attributes:
        index: its position in the list given to the sender.
        code: MSA-1 of the ACK (``AA``, ``AE``, ``AR``, ``CA``, …), ``""`` when the reply had no
            MSA, ``None`` when no reply came.
        latency_s: seconds from sending the frame to receiving the reply (last attempt).
        attempts: how many times it was sent.
        error: ``timeout`` or ``connection`` when no reply came.
        sent_at: wall-clock time (epoch seconds) of the last attempt, for end-to-end latency.
    """

    index: int
    code: str | None
    latency_s: float | None
    attempts: int
    error: str | None = None
    sent_at: float = 0.0


@dataclass(slots=True)
class SendResult:
    """The outcome of a sending run.

    Attributes:
        sent: messages sent at least once.
        acked_by_code: MSA-1 code → number of messages that got it.
        errors_by_kind: ``timeout`` / ``connection`` → messages that never got a reply.
        latencies: ACK latency of every acknowledged message, in seconds, in completion order.
        outcomes: one per message, in the order of the input list.
        elapsed_s: wall-clock time of the whole run.
    """

    sent: int = 0
    acked_by_code: dict[str, int] = field(default_factory=dict)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    outcomes: list[MessageOutcome] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def acked(self) -> int:
        """Messages that got a reply, whatever its code."""
        return sum(self.acked_by_code.values())

    @property
    def rate(self) -> float:
        """Acknowledged messages per second over the run."""
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0-100, nearest rank) of the ACK latencies, in seconds.

        Raises:
            ValueError: when no message was acknowledged or ``p`` is outside 0-100.
        """
        if not self.latencies:
            raise ValueError("no ACK latency was recorded")
        if not 0 <= p <= 100:
            raise ValueError("a percentile is between 0 and 100")
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]


def ack_code(reply: bytes) -> str:
    """MSA-1 of an HL7 v2 ACK (``AA``, ``AE``, ``AR``, ``CA``, ``CE``, ``CR``); ``""`` if absent.

    MSA-1 is the acknowledgment code (v2.5.1 §2.14.8, HL7 table 0008). Only the header's field
    separator is needed to find it, so the reply is not fully parsed.
    """
    if len(reply) < 4 or not reply.startswith(b"MSH"):
        return ""
    sep = reply[3:4]
    for segment in reply.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA" + sep):
            return segment.split(sep)[1].decode("ascii", "replace").strip()
    return ""


def patient_key(message: bytes) -> str:
    """PID-3.1 of the first identifier, to keep one patient's messages on one connection.

    Returns ``""`` when the message has no PID-3 (all such messages share a connection).
    """
    sep = message[3:4] or b"|"
    for segment in message.split(b"\r"):
        if segment.startswith(b"PID" + sep):
            fields = segment.split(sep)
            if len(fields) > 3:
                return fields[3].split(b"~")[0].split(b"^")[0].decode("utf-8", "replace")
    return ""


def _as_bytes(message: str | bytes) -> bytes:
    return message.encode("utf-8") if isinstance(message, str) else message


async def send_messages(
    host: str,
    port: int,
    messages: Sequence[str | bytes],
    *,
    connections: int = 1,
    timeout: float = 10.0,
    key: Callable[[bytes], str] | None = None,
    rate: float | None = None,
    retries: int = 0,
) -> SendResult:
    """Send ``messages`` over ``connections`` MLLP connections and wait for every ACK.

    Without ``key``, connections take the next unsent message as soon as they are free (fastest;
    two messages of one patient may then overtake each other). With ``key`` (e.g.
    ``patient_key``), messages with the same key go through the same connection in list order,
    as a hospital interface engine keeps one patient's messages in order.

    Args:
        host: the broker's MLLP host.
        port: its MLLP port.
        messages: ER7 messages; text is sent as UTF-8.
        connections: how many concurrent connections, at least 1.
        timeout: seconds to connect and, separately, to wait for each ACK.
        key: groups messages that must stay in order on one connection.
        rate: total messages per second to pace the run at; ``None`` sends as fast as ACKs come.
        retries: how many times a message without a reply (timeout, broken connection) is sent
            again on a new connection; resends carry the same MSH-10, as real senders do.

    Returns:
        The counts, latencies and per-message outcomes.

    Raises:
        ValueError: when ``connections`` is below 1, ``rate`` is not positive or ``retries``
            is negative.
    """
    if connections < 1:
        raise ValueError("connections must be at least 1")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive messages per second")
    if retries < 0:
        raise ValueError("retries cannot be negative")
    payloads = [_as_bytes(m) for m in messages]
    outcomes: list[MessageOutcome | None] = [None] * len(payloads)
    latencies: list[float] = []
    start = time.perf_counter()
    pace = connections / rate if rate else 0.0  # seconds between two sends on one connection

    queues: list[list[int]]
    if key is None:
        shared = iter(range(len(payloads)))
        queues = []
    else:
        queues = [[] for _ in range(connections)]
        for index, payload in enumerate(payloads):
            queues[zlib.crc32(key(payload).encode("utf-8")) % connections].append(index)

    async def one(index: int, client: AsyncMllpClient) -> None:
        attempts = 0
        while True:
            attempts += 1
            sent_at = time.perf_counter()
            wall = time.time()
            try:
                reply = await client.send(payloads[index])
            except MllpError as exc:  # MllpTimeout or MllpConnectionError
                error = "timeout" if isinstance(exc, MllpTimeout) else "connection"
                if attempts <= retries:
                    continue  # AsyncMllpClient reconnects on the next send
                outcomes[index] = MessageOutcome(index, None, None, attempts, error, wall)
                return
            latency = time.perf_counter() - sent_at
            latencies.append(latency)
            outcomes[index] = MessageOutcome(index, ack_code(reply), latency, attempts, None, wall)
            return

    async def worker(number: int) -> None:
        order = iter(queues[number]) if key is not None else shared
        client = AsyncMllpClient(host, port, timeout=timeout)
        try:
            for count in itertools.count():
                index = next(order, None)
                if index is None:
                    return
                if pace:
                    delay = start + number * pace / connections + count * pace
                    await asyncio.sleep(max(0.0, delay - time.perf_counter()))
                await one(index, client)
        finally:
            await client.close()

    await asyncio.gather(*(worker(n) for n in range(connections)))
    result = SendResult(elapsed_s=time.perf_counter() - start, latencies=latencies)
    codes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for outcome in outcomes:
        assert outcome is not None
        if outcome.error:
            errors[outcome.error] += 1
        else:
            codes[outcome.code or ""] += 1
    result.outcomes = [o for o in outcomes if o is not None]
    result.sent = len(result.outcomes)
    result.acked_by_code = dict(codes)
    result.errors_by_kind = dict(errors)
    _log.info(
        "sender.finished",
        sent=result.sent,
        acked=dict(codes),
        errors=dict(errors),
        elapsed_s=round(result.elapsed_s, 3),
    )
    return result


def send(
    host: str,
    port: int,
    messages: Sequence[str | bytes],
    *,
    connections: int = 1,
    timeout: float = 10.0,
    key: Callable[[bytes], str] | None = None,
    rate: float | None = None,
    retries: int = 0,
) -> SendResult:
    """Run ``send_messages`` to completion from synchronous code, in a new event loop.

    The arguments are those of ``send_messages``.
    """
    return asyncio.run(
        send_messages(
            host,
            port,
            messages,
            connections=connections,
            timeout=timeout,
            key=key,
            rate=rate,
            retries=retries,
        )
    )
