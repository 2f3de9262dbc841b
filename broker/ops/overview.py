"""The operator's overview: every inbound adapter and subscriber at a glance, now.

``GET /api/overview`` returns it and the console's overview page polls it. The queues come
from :func:`broker.ops.backlog.queues` (the same figures as ``GET /api/queues``), to which this
adds what an operator asks first: per inbound adapter, how many messages it received and
refused (per ACK code or HTTP status) and when it last saw one (``pl:adapter:SRC``); per
subscriber, its backlog *including* the messages parked behind its dead letters, how many dead
letters are open and how many of its partitions wait for a retry; and the mappings in force.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis

from broker import keys
from broker.mapping.reload import RejectedReload
from broker.ops.backlog import queues
from broker.ops.stats import subscribers as found_subscribers
from broker.settings import Settings

__all__ = ["dead_letter_counts", "inbound_figures", "overview", "retrying_partitions"]

_ADAPTER_PREFIX = "pl:adapter:"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def inbound_figures(client: redis.Redis, adapter: str) -> dict[str, Any]:
    """One inbound adapter's counters: received, refused per code, last message (epoch s)."""
    raw: Any = client.hgetall(keys.adapter_stats(adapter))
    fields = {_text(k): _text(v) for k, v in raw.items()}
    refused = {
        name.removeprefix("refused:"): int(value)
        for name, value in sorted(fields.items())
        if name.startswith("refused:")
    }
    last_ms = fields.get("last_ms")
    return {
        "id": adapter,
        "received": int(fields.get("received", 0)),
        "refused": refused,
        "refused_total": sum(refused.values()),
        "last_message_at": int(last_ms) / 1000 if last_ms else None,
    }


def dead_letter_counts(client: redis.Redis, subscriber: str) -> tuple[int, int]:
    """The subscriber's dead letters: (still open, in all); replayed, delivered and discarded
    ones are kept, with their status, until the retention trims them. Read from the open index
    (``pl:dlopen:SUB``) and the record hash's length: no record is read."""
    pipe = client.pipeline(transaction=False)
    pipe.scard(keys.dead_open(subscriber))
    pipe.hlen(keys.dead_records(subscriber))
    opened, total = pipe.execute()
    return int(opened), int(total)


def retrying_partitions(client: redis.Redis, subscriber: str, partitions: int) -> int:
    """Partitions of the subscriber that wait for a retry (a ``pl:hold:SUB:P`` mark is set)."""
    marks: Any = client.mget([keys.hold(subscriber, p) for p in range(partitions)])
    return sum(1 for mark in marks if mark is not None)


def _adapters_seen(client: redis.Redis) -> list[str]:
    return sorted(
        _text(k).removeprefix(_ADAPTER_PREFIX)
        for k in client.scan_iter(match=f"{_ADAPTER_PREFIX}*", count=1_000)
    )


def _rejected(reload: RejectedReload | None) -> dict[str, Any] | None:
    if reload is None:
        return None
    return {"at": reload.at, "file": reload.file, "line": reload.line, "reason": reload.reason}


def overview(
    client: redis.Redis,
    settings: Settings,
    *,
    inbound: Sequence[str] = (),
    subscribers: Sequence[str] = (),
    mappings: Sequence[str] = (),
    rejected_reload: RejectedReload | None = None,
    processes: dict[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything the overview page shows, read now.

    Args:
        client: the broker's Redis.
        settings: ``partitions`` and the backpressure limits.
        inbound: the registered inbound adapters' ids; adapters that received messages and are
            no longer registered are listed after them.
        subscribers: the registered subscribers' ids; likewise.
        mappings: the mapping set in force, as ``id@sha256-prefix``.
        rejected_reload: the last refused reload of the mappings, if any.
        processes: what :mod:`broker.ops.processes` found: ``{"listeners": [...],
            "workers": {...}}``; ``None`` when not probed.
        now: the current time in epoch seconds (for tests).

    Returns:
        ``{"at", "inbound": [...], "subscribers": [...], "pipeline": {...}, "rejected",
        "quarantine", "backpressure", "memory", "mappings": {"in_force", "rejected_reload"}}``.
        Each subscriber has ``backlog`` (``depth`` + ``parked``), ``depth``, ``parked``,
        ``oldest_age_s``, ``delivered``, ``dead_letters_open``, ``retrying`` (partitions
        waiting for a retry) and ``flow``.
    """
    now = time.time() if now is None else now
    queue = queues(client, settings, now=now)
    by_id = {s["id"]: s for s in queue["subscribers"]}
    subscriber_ids = list(dict.fromkeys([*subscribers, *found_subscribers(client), *by_id]))
    subs = []
    for sub in subscriber_ids:
        q = by_id.get(sub, {})
        depth, parked = int(q.get("depth", 0)), int(q.get("parked", 0))
        subs.append(
            {
                "id": sub,
                "registered": sub in subscribers,
                "backlog": depth + parked,
                "depth": depth,
                "parked": parked,
                "oldest_age_s": q.get("oldest_age_s"),
                "delivered": int(q.get("delivered", 0)),
                "dead_letters_open": dead_letter_counts(client, sub)[0],
                "retrying": retrying_partitions(client, sub, settings.partitions),
                "flow": q.get("flow"),
            }
        )
    adapter_ids = list(dict.fromkeys([*inbound, *_adapters_seen(client)]))
    return {
        "at": now,
        "inbound": [
            {**inbound_figures(client, a), "registered": a in inbound} for a in adapter_ids
        ],
        "subscribers": subs,
        "pipeline": queue["pipeline"],
        "rejected": queue["rejected"],
        "quarantine": queue["quarantine"],
        "backpressure": queue["backpressure"],
        "memory": queue["memory"],
        "mappings": {"in_force": list(mappings), "rejected_reload": _rejected(rejected_reload)},
        "processes": processes,
    }
