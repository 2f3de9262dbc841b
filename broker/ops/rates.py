"""Rates over time: samples of the counters and backlogs, and what they say about the flow.

A backlog's size says little on its own; whether it grows says whether the broker keeps up.
Beat's periodic housekeeping calls :func:`record`, which keeps one :class:`Sample` (counters,
backlogs, parked messages, Redis memory) every :data:`SAMPLE_INTERVAL_S` in ``pl:rates``: a list
capped at :data:`KEPT` entries that expires :data:`TTL_S` after the last sample, so it stays
small and a stopped beat leaves no stale rates behind. Readers compute over the last
:data:`WINDOW_S`, the live reading being the newest point (:func:`journal_flow`,
:func:`subscriber_flow`):

- offered: journalled per second (``received``), or routed to the subscriber (``queued:SUB``);
- sustained: mapped by the pipeline per second (``routed + filtered + failed``), or delivered
  (``delivered:SUB``);
- growth: the least-squares slope of the backlog over the window, messages per second;
  positive means the broker is falling behind;
- seconds to backpressure: at that growth, when the subscriber's backlog passes
  ``max_backlog`` (or, for the journal, Redis's memory passes ``max_memory_ratio`` of its limit),
  which turns on ``pl:pressure`` and makes the listeners answer AR (docs/reliability.md §7).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from broker import keys
from broker.ops.stats import Snapshot, snapshot
from broker.settings import Settings

__all__ = [
    "KEPT",
    "PROCESSED",
    "SAMPLE_INTERVAL_S",
    "TTL_S",
    "WINDOW_S",
    "Flow",
    "Sample",
    "history",
    "journal_flow",
    "memory_growth",
    "record",
    "subscriber_flow",
]

SAMPLE_INTERVAL_S = 5.0
"""At most one sample per this many seconds, however often the housekeeping runs."""
WINDOW_S = 60.0
"""Rates and growth are computed over the samples of the last minute."""
KEPT = 32
"""Samples kept in ``pl:rates``: over two minutes at the default interval."""
TTL_S = 300
"""``pl:rates`` expires this long after the last sample (beat stopped: no stale rates)."""
PROCESSED = ("routed", "filtered", "failed")
"""The ``pl:stats`` counters the journal drain adds up: one per journalled message it handled."""
_MIN_SPAN_S = 1.0


@dataclass(frozen=True, slots=True)
class Sample:
    """The counters and backlogs at one moment: the raw material of every rate.

    Attributes:
        at: epoch seconds.
        counters: the ``pl:stats`` hash.
        journal: journalled messages the pipeline has not finished.
        backlog: per subscriber, messages waiting (undelivered plus pending).
        parked: per subscriber, messages parked behind its dead letters.
        memory_used: Redis's ``used_memory``, bytes.
        memory_limit: Redis's ``maxmemory``, bytes; 0 when unlimited.
    """

    at: float
    counters: Mapping[str, int] = field(default_factory=dict)
    journal: int = 0
    backlog: Mapping[str, int] = field(default_factory=dict)
    parked: Mapping[str, int] = field(default_factory=dict)
    memory_used: int = 0
    memory_limit: int = 0

    @classmethod
    def of(cls, snap: Snapshot) -> Sample:
        """The sample a snapshot of every queue gives."""
        return cls(
            at=snap.at,
            counters=dict(snap.counters),
            journal=snap.journal_backlog,
            backlog={sub: snap.backlog(sub) for sub in snap.outbound},
            parked=dict(snap.parked),
            memory_used=snap.memory_used,
            memory_limit=snap.memory_limit,
        )

    def to_json(self) -> str:
        """The sample as stored in ``pl:rates``."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: bytes | str) -> Sample:
        """A sample read back from ``pl:rates``.

        Raises:
            ValueError: the text is not a sample (``json.JSONDecodeError`` is one).
        """
        data = json.loads(text)
        try:
            return cls(
                at=float(data["at"]),
                counters={k: int(v) for k, v in data.get("counters", {}).items()},
                journal=int(data.get("journal", 0)),
                backlog={k: int(v) for k, v in data.get("backlog", {}).items()},
                parked={k: int(v) for k, v in data.get("parked", {}).items()},
                memory_used=int(data.get("memory_used", 0)),
                memory_limit=int(data.get("memory_limit", 0)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            msg = f"a pl:rates entry is not a sample ({type(exc).__name__}: {exc})"
            raise ValueError(msg) from exc


@dataclass(frozen=True, slots=True)
class Flow:
    """What one queue takes in, gives out and keeps, over the last window.

    A rate is ``None`` when fewer than two samples a second apart cover the window (beat has
    not run yet, or a counter went back, as after a flushed Redis).

    Attributes:
        backlog: messages waiting now (undelivered plus pending).
        parked: messages parked behind dead letters now (subscribers; 0 for the journal).
        offered_per_s: messages arriving per second.
        sustained_per_s: messages the broker finished per second.
        growth_per_s: how fast the backlog grows, messages per second; negative when it drains.
        window_s: the time the rates cover, seconds.
        seconds_to_backpressure: at this growth, seconds until backpressure turns on; 0 when
            the limit is already passed, ``None`` when the backlog is not growing (or no limit).
    """

    backlog: int
    parked: int = 0
    offered_per_s: float | None = None
    sustained_per_s: float | None = None
    growth_per_s: float | None = None
    window_s: float | None = None
    seconds_to_backpressure: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def record(
    client: redis.Redis,
    *,
    registered: Sequence[str],
    settings: Settings,
    now: float | None = None,
) -> Sample | None:
    """Keep a sample of every queue in ``pl:rates``, unless one was kept less than an interval ago.

    Args:
        client: the broker's Redis.
        registered: the enabled subscribers' ids.
        settings: ``partitions`` and ``max_backlog`` (lag is counted just past it).
        now: the current time in epoch seconds (for tests).

    Returns:
        The sample kept, or ``None`` when the last one is recent enough.
    """
    now = time.time() if now is None else now
    newest: Any = client.lindex(keys.RATES, 0)
    if newest is not None:
        try:
            if now - Sample.from_json(newest).at < SAMPLE_INTERVAL_S * 0.8:
                return None
        except ValueError:
            pass
    snap = snapshot(
        client,
        settings.partitions,
        registered=registered,
        now=now,
        lag_cap=settings.max_backlog + 1,
    )
    sample = Sample.of(snap)
    pipe = client.pipeline(transaction=True)
    pipe.lpush(keys.RATES, sample.to_json())
    pipe.ltrim(keys.RATES, 0, KEPT - 1)
    pipe.expire(keys.RATES, TTL_S)
    pipe.execute()
    return sample


def history(client: redis.Redis) -> list[Sample]:
    """The samples kept in ``pl:rates``, oldest first (unreadable entries are skipped)."""
    raw: Any = client.lrange(keys.RATES, 0, -1)
    samples = []
    for text in reversed(raw):
        try:
            samples.append(Sample.from_json(text))
        except ValueError:
            continue
    return samples


def _window(samples: Sequence[Sample], window_s: float) -> list[Sample]:
    """The samples of the last ``window_s`` seconds, oldest first."""
    ordered = sorted(samples, key=lambda s: s.at)
    if not ordered:
        return []
    start = ordered[-1].at - window_s
    return [s for s in ordered if s.at >= start]


def _rate(window: Sequence[Sample], value: Callable[[Sample], int]) -> float | None:
    """Per second between the first and the last sample; ``None`` if too short or reset."""
    if len(window) < 2:
        return None
    span = window[-1].at - window[0].at
    delta = value(window[-1]) - value(window[0])
    if span < _MIN_SPAN_S or delta < 0:
        return None
    return round(delta / span, 3)


def _slope(window: Sequence[Sample], value: Callable[[Sample], int]) -> float | None:
    """Least-squares slope of ``value`` over time, per second; ``None`` if too short."""
    if len(window) < 2 or window[-1].at - window[0].at < _MIN_SPAN_S:
        return None
    mean_t = sum(s.at for s in window) / len(window)
    mean_y = sum(value(s) for s in window) / len(window)
    num = sum((s.at - mean_t) * (value(s) - mean_y) for s in window)
    den = sum((s.at - mean_t) ** 2 for s in window)
    return round(num / den, 3)


def _eta(current: float, limit: float | None, growth: float | None) -> float | None:
    """Seconds until ``current`` passes ``limit`` at ``growth`` per second."""
    if limit is None:
        return None
    if current > limit:
        return 0.0
    if growth is None or growth <= 0:
        return None
    return round((limit - current) / growth, 1)


def _span(window: Sequence[Sample]) -> float | None:
    return round(window[-1].at - window[0].at, 3) if len(window) >= 2 else None


def subscriber_flow(
    samples: Sequence[Sample], subscriber: str, *, max_backlog: int, window_s: float = WINDOW_S
) -> Flow:
    """One subscriber's flow: routed to it, delivered, its backlog's growth, time to the limit.

    Args:
        samples: the kept samples and, newest, the live one (any order).
        subscriber: the subscriber's id.
        max_backlog: ``Settings.max_backlog``: past it, backpressure turns on.
        window_s: how far back the rates look.
    """
    window = _window(samples, window_s)
    if not window:
        return Flow(backlog=0)
    now = window[-1]
    growth = _slope(window, lambda s: s.backlog.get(subscriber, 0))
    backlog = now.backlog.get(subscriber, 0)
    return Flow(
        backlog=backlog,
        parked=now.parked.get(subscriber, 0),
        offered_per_s=_rate(window, lambda s: s.counters.get(f"queued:{subscriber}", 0)),
        sustained_per_s=_rate(window, lambda s: s.counters.get(f"delivered:{subscriber}", 0)),
        growth_per_s=growth,
        window_s=_span(window),
        seconds_to_backpressure=_eta(backlog, max_backlog, growth),
    )


def memory_growth(samples: Sequence[Sample], *, window_s: float = WINDOW_S) -> float | None:
    """How fast Redis's used memory grows over the window, bytes per second."""
    return _slope(_window(samples, window_s), lambda s: s.memory_used)


def journal_flow(
    samples: Sequence[Sample], *, max_memory_ratio: float, window_s: float = WINDOW_S
) -> Flow:
    """The pipeline's flow: journalled, mapped, the journal's backlog, time to the memory mark.

    The journal's own backlog has no limit; what stops the intake is Redis's memory passing
    ``max_memory_ratio`` of ``maxmemory``, so its time to backpressure follows the memory's
    growth (``None`` when Redis has no memory limit).

    Args:
        samples: the kept samples and, newest, the live one (any order).
        max_memory_ratio: ``Settings.max_memory_ratio``.
        window_s: how far back the rates look.
    """
    window = _window(samples, window_s)
    if not window:
        return Flow(backlog=0)
    now = window[-1]
    limit = now.memory_limit * max_memory_ratio if now.memory_limit else None
    return Flow(
        backlog=now.journal,
        offered_per_s=_rate(window, lambda s: s.counters.get("received", 0)),
        sustained_per_s=_rate(window, lambda s: sum(s.counters.get(n, 0) for n in PROCESSED)),
        growth_per_s=_slope(window, lambda s: s.journal),
        window_s=_span(window),
        seconds_to_backpressure=_eta(now.memory_used, limit, memory_growth(window)),
    )
