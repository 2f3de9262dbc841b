"""The on-call overview: per inbound adapter and per subscriber, what ``passerelle status`` shows.

Built on the API's own readings, never a second copy of them: :func:`broker.ops.backlog.queues`
(the body of ``GET /api/queues``: backlogs, parked, ages, counters, flows) and
:func:`broker.ops.health.readiness`, with what they do not cover read here:

- per inbound adapter: the refusals kept in ``pl:rejected`` (by ACK code when the entry keeps
  the answer sent, the last :data:`REFUSALS_READ` of them), the time of its newest message in
  the journal (among the last :data:`JOURNAL_TAIL` entries of each partition: an adapter quiet
  behind a busy one shows ``None``), ``received`` from the ``received:ADAPTER`` counter when
  the intake keeps one, and whether its listener answers;
- per subscriber: the partitions waiting out a retry back-off (``pl:hold:SUB:P``).

Open dead letters are the delivery side's records (``DeadLetterStore``), which this layer does
not import; the caller adds them (``passerelle status`` does).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import redis

from broker import keys
from broker.ack import read_ack
from broker.adapters.spec import AdapterSpec
from broker.errors import HL7v2ParseError
from broker.ops.backlog import queues
from broker.ops.health import readiness
from broker.ops.probe import tcp_answers
from broker.settings import Settings

__all__ = ["JOURNAL_TAIL", "REFUSALS_READ", "inbound", "overview", "retrying"]

REFUSALS_READ = 10_000
"""The newest ``pl:rejected`` entries counted per reading."""
JOURNAL_TAIL = 20
"""The newest journal entries read per partition to find each adapter's last message."""
_LISTENER_TIMEOUT_S = 0.5


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _at(entry_id: Any) -> float:
    return int(_text(entry_id).partition("-")[0]) / 1000


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _ack_code(fields: dict[bytes, bytes]) -> str:
    """MSA-1 of the answer a refusal was sent, ``refused`` when the entry does not keep it."""
    answer = fields.get(b"ack")
    if not answer:
        return "refused"
    try:
        return read_ack(answer).code
    except HL7v2ParseError:
        return "refused"


def inbound(
    client: redis.Redis,
    adapters: list[AdapterSpec],
    settings: Settings,
    *,
    api_url: str | None = None,
    probe_listeners: bool = True,
) -> list[dict[str, Any]]:
    """Each inbound adapter: received, refusals by ACK code, last message, listener answering.

    Args:
        client: the broker's Redis.
        adapters: the registrations (the inbound ones are read).
        settings: ``partitions``.
        api_url: the API's URL: an ``http`` adapter's listener is the API.
        probe_listeners: knock on each MLLP listener's port (``listener_up``); ``None`` if not.
    """
    sources = [a for a in adapters if a.direction == "inbound"]
    counters: Any = client.hgetall(keys.STATS)
    counted = {_text(k): int(v) for k, v in counters.items()}
    refused: dict[str, dict[str, int]] = {a.id: {} for a in sources}
    last_refused: dict[str, float] = {}
    rejected: Any = client.xrevrange(keys.REJECTED, count=REFUSALS_READ)
    for entry_id, fields in rejected:
        source = _text(fields.get(b"source", b""))
        if source not in refused:
            continue
        code = _ack_code(fields)
        refused[source][code] = refused[source].get(code, 0) + 1
        last_refused.setdefault(source, _at(entry_id))
    last: dict[str, float] = {}
    for partition in range(settings.partitions):
        tail: Any = client.xrevrange(keys.inbound(partition), count=JOURNAL_TAIL)
        for entry_id, fields in tail:
            source = _text(fields.get(b"source", b""))
            at = _at(entry_id)
            if at > last.get(source, 0.0):
                last[source] = at
    api = urlsplit(api_url) if api_url else None
    out = []
    for adapter in sources:
        up: bool | None = None
        if probe_listeners and adapter.transport == "mllp" and adapter.enabled:
            host, port = adapter.host_port
            up = tcp_answers(host, port, _LISTENER_TIMEOUT_S).ok
        elif probe_listeners and adapter.transport == "http" and api and api.hostname and api.port:
            # An inbound HTTP adapter is a route of the API: its listener is the API's.
            up = tcp_answers(api.hostname, api.port, _LISTENER_TIMEOUT_S).ok
        out.append(
            {
                "id": adapter.id,
                "transport": adapter.transport,
                "enabled": adapter.enabled,
                "received": counted.get(f"received:{adapter.id}"),
                "refused": refused[adapter.id],
                "refused_total": sum(refused[adapter.id].values()),
                "last_refused_at": _iso(last_refused.get(adapter.id)),
                "last_message_at": _iso(last.get(adapter.id)),
                "listener_up": up,
            }
        )
    return out


def retrying(client: redis.Redis, subscriber: str, partitions: int, now: float) -> dict[str, Any]:
    """A subscriber's partitions waiting out a retry back-off, and the next retry's delay."""
    pipe = client.pipeline(transaction=False)
    for partition in range(partitions):
        pipe.get(keys.hold(subscriber, partition))
    waits = [float(v) - now for v in pipe.execute() if v is not None and float(v) > now]
    return {
        "partitions": len(waits),
        "next_retry_in_s": round(min(waits), 1) if waits else None,
    }


def overview(
    client: redis.Redis,
    settings: Settings,
    adapters: list[AdapterSpec],
    *,
    api_url: str | None = None,
    probe_listeners: bool = True,
    now: float | None = None,
) -> dict[str, Any]:
    """The whole overview as one JSON-ready document.

    Returns:
        ``{"at", "redis": {...}, "inbound": [...], "subscribers": [...], "journal": {...},
        "backpressure": {...}, "memory": {...}}``. Each subscriber has ``delivered``,
        ``backlog`` (waiting plus parked), ``waiting``, ``parked``, ``dead_lettered``,
        ``retrying``, ``oldest_age_s`` (of the oldest undelivered message), ``flow``.
    """
    now = time.time() if now is None else now
    ready = readiness(client)
    body = queues(client, settings, now=now)
    found = {s["id"]: s for s in body["subscribers"]}
    subscribers = []
    for adapter in adapters:
        if adapter.direction != "outbound":
            continue
        queue = found.get(adapter.id, {})
        waiting, parked = int(queue.get("depth", 0)), int(queue.get("parked", 0))
        subscribers.append(
            {
                "id": adapter.id,
                "transport": adapter.transport,
                "enabled": adapter.enabled,
                "delivered": int(queue.get("delivered", 0)),
                "backlog": waiting + parked,
                "waiting": waiting,
                "parked": parked,
                "dead_lettered": int(queue.get("dead_lettered", 0)),
                "retrying": retrying(client, adapter.id, settings.partitions, now),
                "oldest_age_s": queue.get("oldest_age_s"),
                "flow": queue.get("flow"),
            }
        )
    counters = body["counters"]
    return {
        "at": _iso(now),
        "redis": {"ready": ready.ready, "latency_ms": ready.redis_latency_ms},
        "inbound": inbound(
            client, adapters, settings, api_url=api_url, probe_listeners=probe_listeners
        ),
        "subscribers": subscribers,
        "journal": {
            "received": counters.get("received", 0),
            "rejected": body["rejected"],
            "quarantine": body["quarantine"],
            "backlog": sum(p["depth"] for p in body["inbound"]),
            "flow": body["pipeline"],
        },
        "backpressure": body["backpressure"],
        "memory": body["memory"],
    }
