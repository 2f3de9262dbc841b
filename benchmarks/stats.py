"""The arithmetic of the steady-load benchmark: percentiles, backlog trend, the per-hop budget.

Pure functions over plain numbers (epoch seconds), tested in ``tests/benchmarks/``.

A message's trace tiles its end-to-end time for one subscriber into hops::

    sent ─▶ journalled ─▶ mapping start ─▶ mapping end ─▶ committed ─▶ send start ─▶ received
     (hospital)  (journal entry id)  (pl:timings map record)  (its id)  (send record)  (capture)

so the hops of ``HOPS`` add up to ``received - sent``. The ACK latency (sender) and the reply
(``received → reply back``) are reported beside them: they are not on the path to the receiver.
Journal entry and commit times come from Redis stream ids, in whole milliseconds (floored):
the hop after one reads up to 1 ms long, the hop before it up to 1 ms short.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["HOPS", "Trace", "hop_durations", "percentile", "summary", "trend"]

HOPS = (
    "received → journalled",
    "journal → mapping start",
    "mapping",
    "routing + commit",
    "queue → send start",
    "send → receiver",
)
"""The hops, in order, that add up to one subscriber's end-to-end time."""


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0–100) by nearest rank: the smallest value with ``p`` % at or below.

    ``nan`` for no values.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float], scale: float = 1000.0) -> dict[str, float]:
    """``n``, ``p50``, ``p95``, ``p99`` and ``max`` of ``values`` (times ``scale``: s → ms)."""
    return {
        "n": len(values),
        "p50": percentile(values, 50) * scale,
        "p95": percentile(values, 95) * scale,
        "p99": percentile(values, 99) * scale,
        "max": (max(values) * scale) if values else math.nan,
    }


def trend(samples: Iterable[tuple[float, float]]) -> float:
    """The least-squares slope of ``(time, value)`` samples: units per second (0 for < 2 times).

    Of the backlog sampled every second, the growth in messages per second: about 0 while the
    broker keeps up, the shortfall (offered − delivered rate) when it falls behind.
    """
    points = list(samples)
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


@dataclass(frozen=True, slots=True)
class Trace:
    """The timestamps of one message on its way to one subscriber (epoch seconds).

    Attributes:
        sent: the hospital sent the frame.
        journalled: the journal entry's time (its stream id).
        map_start: the pipeline drain started mapping it.
        map_end: mapping and routing returned.
        committed: its batch's MULTI ran (the timing record's stream id).
        send_start: the delivery drain started the attempt (envelope load, render, send).
        received: the subscriber had it (the capture's clock).
        replied: the attempt returned with the subscriber's reply.
    """

    sent: float
    journalled: float
    map_start: float
    map_end: float
    committed: float
    send_start: float
    received: float
    replied: float


def hop_durations(trace: Trace) -> dict[str, float]:
    """The duration of each of ``HOPS`` (seconds), plus ``receiver → reply`` and ``end to end``.

    The hops of ``HOPS`` sum to ``end to end`` (``received - sent``) exactly.
    """
    points = (
        trace.sent,
        trace.journalled,
        trace.map_start,
        trace.map_end,
        trace.committed,
        trace.send_start,
        trace.received,
    )
    out = {hop: b - a for hop, a, b in zip(HOPS, points, points[1:], strict=False)}
    out["receiver → reply"] = trace.replied - trace.received
    out["end to end"] = trace.received - trace.sent
    return out
