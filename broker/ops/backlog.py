"""What ``GET /api/queues`` shows: every queue now, and its flow over the last minute.

One :func:`~broker.ops.stats.snapshot` gives the depths, ages and counters; the samples of
``pl:rates`` (:mod:`broker.ops.rates`), with that snapshot as the newest point, give each
queue's offered and sustained rates, its backlog's growth and the time left before
backpressure.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from broker.ops.rates import Sample, history, journal_flow, memory_growth, subscriber_flow
from broker.ops.stats import GroupStats, Snapshot, snapshot
from broker.settings import Settings

__all__ = ["queues", "render"]


def _max_age(stats: list[GroupStats]) -> float | None:
    ages = [s.oldest_age_s for s in stats if s.oldest_age_s is not None]
    return max(ages) if ages else None


def render(snap: Snapshot, samples: list[Sample], settings: Settings) -> dict[str, Any]:
    """The body of ``GET /api/queues`` from a snapshot and the kept samples (oldest first).

    Args:
        snap: every queue now; it is also the newest sample.
        samples: the samples of ``pl:rates``.
        settings: ``max_backlog`` and ``max_memory_ratio``, the backpressure limits.
    """
    # A sample from a host whose clock runs ahead would pass for the newest point.
    points = [*(s for s in samples if s.at < snap.at), Sample.of(snap)]
    flows = {
        sub: subscriber_flow(points, sub, max_backlog=settings.max_backlog) for sub in snap.outbound
    }
    subs = []
    for subscriber, partitions in snap.outbound.items():
        per = list(partitions.values())
        own = {
            name.rpartition(":")[0]: value
            for name, value in snap.counters.items()
            if name.endswith(f":{subscriber}")
        }
        subs.append(
            {
                "id": subscriber,
                "depth": sum(s.depth for s in per),
                "pending": sum(s.pending for s in per),
                "lag": sum(s.lag for s in per),
                "parked": snap.parked.get(subscriber, 0),
                "oldest_age_s": _max_age(per),
                "delivered": own.get("delivered", 0),
                "failed": own.get("failed", 0),
                "dead_lettered": own.get("dead_lettered", 0),
                "dead_letters": snap.dead_letters.get(subscriber, 0),
                "counters": own,
                "flow": flows[subscriber].as_dict(),
                "partitions": [{"partition": p, **s.as_dict()} for p, s in partitions.items()],
            }
        )
    pipeline = journal_flow(points, max_memory_ratio=settings.max_memory_ratio)
    etas = [f.seconds_to_backpressure for f in (pipeline, *flows.values())]
    known = [eta for eta in etas if eta is not None]
    return {
        "inbound": [{"partition": p, **g.as_dict()} for p, g in snap.inbound.items()],
        "pipeline": pipeline.as_dict(),
        "subscribers": subs,
        "rejected": snap.rejected,
        "quarantine": snap.quarantine,
        "counters": snap.counters,
        "memory": {
            "used_bytes": snap.memory_used,
            "limit_bytes": snap.memory_limit,
            "growth_bytes_per_s": memory_growth(points),
        },
        "backpressure": {
            "on": snap.pressure is not None,
            "reason": snap.pressure,
            "seconds_to": min(known) if known else None,
        },
    }


def queues(client: redis.Redis, settings: Settings, *, now: float | None = None) -> dict[str, Any]:
    """Every queue's depth, pending count, age of oldest and flow, with the counters.

    Args:
        client: the Redis client.
        settings: ``partitions`` (the journal streams are ``pl:in:0`` … ``P-1``) and the
            backpressure limits.
        now: the current time in epoch seconds (for tests).

    Returns:
        ``{"inbound": [...per partition...], "pipeline": {...flow...}, "subscribers": [...],
        "rejected": n, "quarantine": n, "counters": {...}, "memory": {...},
        "backpressure": {...}}``. Each subscriber has ``depth`` (``lag`` + ``pending``),
        ``parked``, ``oldest_age_s``, ``delivered``, ``failed``, ``dead_lettered``,
        ``dead_letters`` (length of its dead-letter stream), ``counters``, ``flow`` and
        ``partitions``; a flow is :class:`broker.ops.rates.Flow`.
    """
    now = time.time() if now is None else now
    return render(snapshot(client, settings.partitions, now=now), history(client), settings)
