"""End-to-end latency per subscriber: received → delivered, kept as a histogram in Redis.

The delivery drain queues one :func:`observe` per batch on the MULTI it already sends: one
``HINCRBY`` per bucket the batch's messages fell in, the count and the sum (``pl:latency:SUB``),
so the histogram survives restarts and every API process reads the same one. :func:`read`
turns it into the cumulative buckets a Prometheus histogram exposes.

The start is the envelope's ``received_at`` (the listener's clock when the message was taken),
the end is the drain's clock when the receiver confirmed it, so a replayed dead letter counts
from its first arrival.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from broker import keys

__all__ = ["BUCKETS", "Histogram", "observe", "read"]

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds in seconds: 5 ms (an idle broker) to a minute (retries); beyond: ``+Inf``."""


def _bucket(seconds: float) -> str:
    index = bisect.bisect_left(BUCKETS, seconds)
    return f"le:{BUCKETS[index]}" if index < len(BUCKETS) else "le:+Inf"


def observe(pipe: Any, subscriber: str, latencies: Iterable[float]) -> None:
    """Queue a batch's latencies (seconds) on ``pipe``: one HINCRBY per bucket hit, count, sum."""
    values = [max(0.0, v) for v in latencies]
    if not values:
        return
    key = keys.latency(subscriber)
    for bucket, count in Counter(_bucket(v) for v in values).items():
        pipe.hincrby(key, bucket, count)
    pipe.hincrby(key, "count", len(values))
    pipe.hincrbyfloat(key, "sum", sum(values))


@dataclass(frozen=True)
class Histogram:
    """One subscriber's histogram: cumulative ``(bound, count)`` pairs ending with ``+Inf``."""

    buckets: list[tuple[float, int]]
    count: int
    sum: float


def read(client: redis.Redis, subscribers: Iterable[str]) -> dict[str, Histogram]:
    """The histograms of ``subscribers`` that delivered anything."""
    wanted = list(subscribers)
    pipe = client.pipeline(transaction=False)
    for sub in wanted:
        pipe.hgetall(keys.latency(sub))
    found: dict[str, Histogram] = {}
    for sub, raw in zip(wanted, pipe.execute(), strict=True):
        if not raw:
            continue
        fields = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
        running = 0
        cumulative = []
        for bound in (*BUCKETS, math.inf):
            label = "+Inf" if bound == math.inf else str(bound)
            running += int(fields.get(f"le:{label}", 0))
            cumulative.append((bound, running))
        found[sub] = Histogram(cumulative, int(fields.get("count", 0)), float(fields.get("sum", 0)))
    return found
