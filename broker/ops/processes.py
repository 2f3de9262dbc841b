"""Whether the processes that move messages are there: listeners accepting, workers answering.

Two live probes, no bookkeeping of their own: an inbound MLLP adapter's listener is up when its
address accepts a TCP connection (opened and closed at once: no frame, nothing logged), and the
Celery workers are those that answer a remote-control ping. Both are read from the process that
asks (the API), so a listener bound on another host of a scaled-out deployment shows as not
accepting from here. :func:`listener_up` (``/metrics`` and the alerts) also takes the listener
process's heartbeat in Redis (``pl:listening:SRC``, :mod:`broker.listen`) as proof of life.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from broker import keys

__all__ = ["PROBE_TIMEOUT_S", "WorkerPing", "accepting", "listener_up", "listeners"]

PROBE_TIMEOUT_S = 0.5
_ANY = {"", "0.0.0.0", "::"}


def accepting(host: str, port: int, *, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether ``host:port`` accepts a TCP connection now (a wildcard host is probed on loopback)."""
    target = ("127.0.0.1" if host != "::" else "::1") if host in _ANY else host
    try:
        with socket.create_connection((target, port), timeout=timeout):
            return True
    except OSError:
        return False


def listener_up(client: redis.Redis, adapter: str, host: str, port: int) -> bool:
    """Whether the adapter's listener is up: its heartbeat is in Redis, or it accepts from here."""
    return bool(client.exists(keys.listening(adapter))) or accepting(host, port)


def listeners(
    addresses: Sequence[tuple[str, str, int]], client: redis.Redis | None = None
) -> list[dict[str, Any]]:
    """Each inbound adapter's listener: ``(adapter, host, port)`` → adapter, address, up.

    With ``client``, up as :func:`listener_up` says (the heartbeat, or accepting from here), the
    answer ``/metrics`` and the alerts give; without, accepting from here only.
    """
    return [
        {
            "adapter": adapter,
            "address": f"{host}:{port}",
            "accepting": (
                accepting(host, port)
                if client is None
                else listener_up(client, adapter, host, port)
            ),
        }
        for adapter, host, port in addresses
    ]


@dataclass
class WorkerPing:
    """The Celery workers that answer a ping, asked at most every ``ttl_s`` seconds.

    Args:
        ping: sends the ping and returns the replies (``Celery.control.ping``: a list of
            ``{worker name: {"ok": "pong"}}``); it waits its own timeout for them.
        ttl_s: how long an answer is reused (a page polling every few seconds must not ping
            every time).
    """

    ping: Callable[[], list[dict[str, Any]]]
    ttl_s: float = 15.0
    _answer: dict[str, Any] | None = None
    _asked: float = float("-inf")
    # The API answers requests on several threads: one ping at a time, the others reuse it.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def workers(self) -> dict[str, Any]:
        """``{"names": [...], "checked_at": epoch s}``; ``names`` is ``None`` when the ping
        itself failed (``error`` names the exception class)."""
        with self._lock:
            return self._workers()

    def _workers(self) -> dict[str, Any]:
        if self._answer is not None and time.monotonic() - self._asked < self.ttl_s:
            return self._answer
        try:
            names: list[str] | None = sorted(name for reply in self.ping() for name in reply)
            answer: dict[str, Any] = {"names": names, "checked_at": time.time()}
        except Exception as exc:  # the broker's transport failing: say so, never fail the page
            answer = {"names": None, "checked_at": time.time(), "error": type(exc).__name__}
        self._answer, self._asked = answer, time.monotonic()
        return answer
