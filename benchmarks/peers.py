"""Capture peers in their own processes, so the subscribers do not share the sender's GIL.

Subscribers are other machines in production; in one benchmark process the FHIR capture, the MLLP
capture and the 16-connection sender would compete for one interpreter lock and the figures
would measure that contention instead of the broker.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

_CALLABLE = "__callable__"


def _arrivals(peer: Any) -> list[tuple[str, float]]:
    """``(key, epoch seconds)`` of every message received: envelope id (FHIR), MSH-10 (MLLP)."""
    if hasattr(peer, "arrivals"):
        return list(peer.arrivals())
    return [(m.control_id, m.received_at.timestamp()) for m in peer.messages]


def _serve(kind: str, kwargs: dict[str, Any], conn: Connection) -> None:
    from passerelle_demo.peers.fhir_capture import FhirCapture
    from passerelle_demo.peers.mllp_capture import MllpCapture

    peer: Any = FhirCapture(**kwargs) if kind == "fhir" else MllpCapture(**kwargs)
    while True:
        op, name, args = conn.recv()
        if op == "stop":
            peer.stop()
            conn.send(None)
            return
        if op == "arrivals":
            conn.send(_arrivals(peer))
            continue
        value = getattr(peer, name)
        if op == "get":
            conn.send(_CALLABLE if callable(value) else value)
        else:
            conn.send(value(*args))


class RemotePeer:
    """A FhirCapture or MllpCapture running in a child process, used like the local object."""

    def __init__(self, kind: str, **kwargs: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(kind, kwargs, child), daemon=True)
        self._process.start()

    def __getattr__(self, name: str) -> Any:
        self._conn.send(("get", name, ()))
        value = self._conn.recv()
        if value != _CALLABLE:
            return value

        def call(*args: Any) -> Any:
            self._conn.send(("call", name, args))
            return self._conn.recv()

        return call

    def arrival_times(self) -> list[tuple[str, float]]:
        """``(key, epoch seconds)`` of every message received, in order, without the payloads.

        The key is the envelope id (``Bundle.identifier``) for FHIR, MSH-10 for MLLP.
        """
        self._conn.send(("arrivals", "", ()))
        result: list[tuple[str, float]] = self._conn.recv()
        return result

    def stop(self) -> None:
        """Stop the capture and its process."""
        if self._process.is_alive():
            self._conn.send(("stop", "", ()))
            self._conn.recv()
            self._process.join(10)
