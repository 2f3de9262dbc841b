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

__all__ = ["BUCKETS", "PERCENTILES", "Histogram", "observe", "percentiles", "read"]

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds in seconds: 5 ms (an idle broker) to a minute (retries); beyond: ``+Inf``."""

PERCENTILES = (0.5, 0.95, 0.99)
"""The percentiles the overview shows (p50, p95, p99)."""


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

    def quantile(self, q: float) -> float | None:
        """The latency below which a share ``q`` (0 < q ≤ 1) of the deliveries fell, in seconds.

        Estimated as Prometheus's ``histogram_quantile`` does, so the console and a Grafana
        panel agree: linear inside the bucket the rank falls in (the first bucket starts at 0);
        in the ``+Inf`` bucket, the largest finite bound (the histogram knows no more).
        ``None`` when nothing was observed.
        """
        if not 0 < q <= 1:
            msg = f"a quantile is between 0 (excluded) and 1, got {q}"
            raise ValueError(msg)
        total = self.buckets[-1][1] if self.buckets else 0
        if total == 0:
            return None
        rank = q * total
        lower, below = 0.0, 0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower
                inside = cumulative - below
                return lower + (bound - lower) * (rank - below) / inside
            lower, below = bound, cumulative
        return lower  # unreachable: the +Inf bucket holds every observation


def percentiles(histogram: Histogram | None) -> dict[str, Any] | None:
    """``{"p50", "p95", "p99"}`` in seconds and the ``count`` they come from; ``None`` when the
    subscriber delivered nothing yet (the one computation the overview, its page and
    ``passerelle status`` show)."""
    if histogram is None or not histogram.buckets or histogram.buckets[-1][1] == 0:
        return None
    found: dict[str, Any] = {
        f"p{round(q * 100)}": round(value, 6)
        for q in PERCENTILES
        if (value := histogram.quantile(q)) is not None
    }
    found["count"] = histogram.buckets[-1][1]
    return found


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
