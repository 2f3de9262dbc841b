"""Listeners accepting and workers answering, as the overview probes them: real sockets, a real
Celery client on a real Redis."""

from __future__ import annotations

import socket
import time

from broker.ops.processes import WorkerPing, accepting, listeners
from broker.settings import Settings
from broker.testing import free_port
from broker.worker.celery_app import create_celery


def test_a_listening_address_is_accepting_and_a_closed_one_is_not() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert accepting("127.0.0.1", port)
        assert accepting("0.0.0.0", port)  # a wildcard bind is probed on loopback
    assert not accepting("127.0.0.1", port)
    closed = free_port()
    assert listeners([("chu-rabat-adt", "127.0.0.1", closed)]) == [
        {"adapter": "chu-rabat-adt", "address": f"127.0.0.1:{closed}", "accepting": False}
    ]


def test_worker_answers_are_reused_for_their_ttl() -> None:
    calls: list[float] = []

    def ping() -> list[dict[str, dict[str, str]]]:
        calls.append(time.monotonic())
        return [{"celery@b": {"ok": "pong"}}, {"celery@a": {"ok": "pong"}}]

    probe = WorkerPing(ping, ttl_s=3600)
    first = probe.workers()
    assert first["names"] == ["celery@a", "celery@b"]
    assert probe.workers() is first
    assert len(calls) == 1
    assert WorkerPing(ping, ttl_s=0).workers()["names"] == ["celery@a", "celery@b"]


def test_a_failing_ping_says_unknown_not_none() -> None:
    def ping() -> list[dict[str, dict[str, str]]]:
        raise ConnectionRefusedError("no broker")

    answer = WorkerPing(ping).workers()
    assert answer["names"] is None
    assert answer["error"] == "ConnectionRefusedError"


def test_no_worker_on_the_broker_answers_nothing(redis_url: str) -> None:
    """A real Celery ping over the test Redis, where no worker runs: an empty list, not None."""
    celery = create_celery(Settings(redis_url=redis_url))
    answer = WorkerPing(lambda: celery.control.ping(timeout=0.5)).workers()
    assert answer["names"] == []
