"""Queue and counter statistics read from Redis: depth, lag, pending, age of oldest, counters.

Every number comes from Redis itself (``XINFO GROUPS``, ``XPENDING``, ``XRANGE`` and the
``pl:stats`` hash), so any process can compute them and they survive restarts. Stream entry ids
start with their creation time in milliseconds, which gives the age of the oldest waiting entry.

Redis 7 reports a group's ``lag`` in ``XINFO GROUPS``; the embedded Redis 6.2 does not, so there
the entries after the group's last-delivered id are counted with ``XRANGE``, up to ``lag_cap``
(``lag_exact`` is false beyond it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from broker import keys

__all__ = [
    "GroupStats",
    "counters",
    "group_stats",
    "prometheus_text",
    "queues",
    "subscribers",
]

_OUT_PREFIX = "pl:out:"
_PAGE = 1_000


@dataclass(frozen=True, slots=True)
class GroupStats:
    """Where one consumer group stands on one stream.

    Attributes:
        stream: the stream key.
        group: the consumer group.
        length: entries in the stream (including those already processed and kept).
        lag: entries not yet delivered to the group.
        lag_exact: false when ``lag`` was counted only up to a cap.
        pending: entries delivered to the group but not acknowledged yet.
        oldest_pending_age_s: age of the oldest pending entry, ``None`` when none.
        oldest_undelivered_age_s: age of the oldest entry not yet delivered, ``None`` when none.
    """

    stream: str
    group: str
    length: int
    lag: int
    lag_exact: bool
    pending: int
    oldest_pending_age_s: float | None
    oldest_undelivered_age_s: float | None

    @property
    def depth(self) -> int:
        """Work left for the group: undelivered plus unacknowledged entries."""
        return self.lag + self.pending

    @property
    def oldest_age_s(self) -> float | None:
        """Age of the oldest entry still waiting (pending or undelivered), ``None`` when idle."""
        ages = [
            a for a in (self.oldest_pending_age_s, self.oldest_undelivered_age_s) if a is not None
        ]
        return max(ages) if ages else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with ``depth`` and ``oldest_age_s``."""
        out = asdict(self)
        out["depth"] = self.depth
        out["oldest_age_s"] = self.oldest_age_s
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_ms(entry_id: Any) -> int:
    return int(_text(entry_id).partition("-")[0])


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _age(entry_id: Any, now: float) -> float:
    return max(0.0, round(now - _id_ms(entry_id) / 1000, 3))


def _next_id(entry_id: str) -> str:
    ms, seq = _id_tuple(entry_id)
    return f"{ms}-{seq + 1}"


def _count_after(
    client: redis.Redis, stream: str, last_id: str, cap: int
) -> tuple[int, str | None, bool]:
    """Count entries after ``last_id`` (up to ``cap``): (count, first id, exact)."""
    count, first, start = 0, None, _next_id(last_id)
    while count < cap:
        wanted = min(_PAGE, cap - count)
        page: Any = client.xrange(stream, min=start, max="+", count=wanted)
        if not page:
            return count, first, True
        if first is None:
            first = _text(page[0][0])
        count += len(page)
        start = _next_id(_text(page[-1][0]))
        if len(page) < wanted:
            return count, first, True
    more: Any = client.xrange(stream, min=start, max="+", count=1)
    return count, first, not more


def group_stats(
    client: redis.Redis,
    stream: str,
    group: str,
    *,
    now: float | None = None,
    lag_cap: int = 100_000,
) -> GroupStats:
    """Read one consumer group's position on one stream.

    A missing stream has everything at zero; a missing group has every entry undelivered.

    Args:
        client: the Redis client.
        stream: the stream key.
        group: the consumer group name.
        now: the current time in epoch seconds (for tests); the clock when ``None``.
        lag_cap: the most entries counted by ``XRANGE`` when Redis does not report the lag.
    """
    now = time.time() if now is None else now
    length = int(client.xlen(stream))
    if length == 0:
        return GroupStats(stream, group, 0, 0, True, 0, None, None)
    info: dict[str, Any] | None = None
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError:
        groups = []
    for candidate in groups:
        if _text(candidate["name"]) == group:
            info = candidate
            break
    if info is None:
        first: Any = client.xrange(stream, count=1)
        oldest = _age(first[0][0], now) if first else None
        return GroupStats(stream, group, length, length, True, 0, None, oldest)
    pending = int(info["pending"])
    oldest_pending = None
    if pending:
        summary: Any = client.xpending(stream, group)
        if summary and summary.get("min"):
            oldest_pending = _age(summary["min"], now)
    last_delivered = _text(info["last-delivered-id"])
    redis_lag = info.get("lag")
    if redis_lag is not None:  # Redis 7+
        lag, exact = int(redis_lag), True
        first_undelivered: str | None = None
        if lag:
            page: Any = client.xrange(stream, min=_next_id(last_delivered), max="+", count=1)
            first_undelivered = _text(page[0][0]) if page else None
    else:
        lag, first_undelivered, exact = _count_after(client, stream, last_delivered, lag_cap)
    oldest_undelivered = _age(first_undelivered, now) if first_undelivered else None
    return GroupStats(
        stream, group, length, lag, exact, pending, oldest_pending, oldest_undelivered
    )


def counters(client: redis.Redis) -> dict[str, int]:
    """The ``pl:stats`` hash: ``received``, ``rejected``, ``delivered:SUB``, … → value."""
    raw: Any = client.hgetall(keys.STATS)
    out: dict[str, int] = {}
    for name, value in raw.items():
        try:
            out[_text(name)] = int(value)
        except ValueError:
            continue
    return out


def subscribers(client: redis.Redis) -> list[str]:
    """Ids of every subscriber that has an outbound stream, sorted."""
    found = set()
    for key in client.scan_iter(match=f"{_OUT_PREFIX}*", count=1_000):
        name, _, partition = _text(key)[len(_OUT_PREFIX) :].rpartition(":")
        if name and partition.isdigit():
            found.add(name)
    return sorted(found)


def _subscriber_partitions(client: redis.Redis, subscriber: str) -> list[int]:
    parts = []
    for key in client.scan_iter(match=f"{_OUT_PREFIX}{subscriber}:*", count=1_000):
        tail = _text(key)[len(_OUT_PREFIX) + len(subscriber) + 1 :]
        if tail.isdigit():
            parts.append(int(tail))
    return sorted(parts)


def _max_age(stats: list[GroupStats]) -> float | None:
    ages = [s.oldest_age_s for s in stats if s.oldest_age_s is not None]
    return max(ages) if ages else None


def queues(client: redis.Redis, partitions: int, *, now: float | None = None) -> dict[str, Any]:
    """Every queue's depth, pending count and age of oldest, with the delivery counters.

    Args:
        client: the Redis client.
        partitions: ``Settings.partitions``: the inbound streams are ``pl:in:0`` … ``P-1``.
        now: the current time in epoch seconds (for tests).

    Returns:
        ``{"inbound": [...per partition...], "subscribers": [...], "rejected": n,
        "quarantine": n, "counters": {...}}``; each subscriber has ``depth``, ``pending``,
        ``lag``, ``oldest_age_s``, ``delivered``, ``failed``, ``dead_lettered``, ``dead_letters``
        (length of its dead-letter stream), ``counters`` and ``partitions``.
    """
    now = time.time() if now is None else now
    stats = counters(client)
    inbound = []
    for partition in range(partitions):
        g = group_stats(client, keys.inbound(partition), keys.PIPELINE_GROUP, now=now)
        inbound.append({"partition": partition, **g.as_dict()})
    subs = []
    for subscriber in subscribers(client):
        per = [
            group_stats(client, keys.outbound(subscriber, p), keys.DELIVER_GROUP, now=now)
            for p in _subscriber_partitions(client, subscriber)
        ]
        own = {
            name.rpartition(":")[0]: value
            for name, value in stats.items()
            if name.endswith(f":{subscriber}")
        }
        subs.append(
            {
                "id": subscriber,
                "depth": sum(s.depth for s in per),
                "pending": sum(s.pending for s in per),
                "lag": sum(s.lag for s in per),
                "oldest_age_s": _max_age(per),
                "delivered": own.get("delivered", 0),
                "failed": own.get("failed", 0),
                "dead_lettered": own.get("dead_lettered", 0),
                "dead_letters": int(client.xlen(keys.dead(subscriber))),
                "counters": own,
                "partitions": [
                    {"partition": p, **s.as_dict()}
                    for p, s in zip(_subscriber_partitions(client, subscriber), per, strict=False)
                ],
            }
        )
    return {
        "inbound": inbound,
        "subscribers": subs,
        "rejected": int(client.xlen(keys.REJECTED)),
        "quarantine": int(client.xlen(keys.QUARANTINE)),
        "counters": stats,
    }


def _metric_name(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in text.lower())
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(client: redis.Redis, partitions: int, *, now: float | None = None) -> str:
    """The Prometheus text exposition (format 0.0.4) of the counters and every queue.

    Counters ``name`` and ``name:SUB`` of ``pl:stats`` become ``passerelle_<name>_total``
    (with ``subscriber="SUB"``); each stream/group gives ``passerelle_stream_length``,
    ``passerelle_group_lag``, ``passerelle_group_pending``, ``passerelle_group_depth`` and
    ``passerelle_group_oldest_age_seconds``.

    Args:
        client: the Redis client.
        partitions: ``Settings.partitions``.
        now: the current time in epoch seconds (for tests).
    """
    now = time.time() if now is None else now
    lines: list[str] = []
    families: dict[str, list[str]] = {}
    for name, value in sorted(counters(client).items()):
        base, sep, subscriber = name.partition(":")
        metric = f"passerelle_{_metric_name(base)}_total"
        labels = f'{{subscriber="{_label(subscriber)}"}}' if sep else ""
        families.setdefault(metric, []).append(f"{metric}{labels} {value}")
    for metric, samples in families.items():
        lines.append(f"# HELP {metric} Counter from the pl:stats hash.")
        lines.append(f"# TYPE {metric} counter")
        lines.extend(samples)

    groups = [
        group_stats(client, keys.inbound(p), keys.PIPELINE_GROUP, now=now)
        for p in range(partitions)
    ]
    for subscriber in subscribers(client):
        groups.extend(
            group_stats(client, keys.outbound(subscriber, p), keys.DELIVER_GROUP, now=now)
            for p in _subscriber_partitions(client, subscriber)
        )
    lengths = {g.stream: g.length for g in groups}
    for stream in (keys.REJECTED, keys.QUARANTINE, *(keys.dead(s) for s in subscribers(client))):
        lengths[stream] = int(client.xlen(stream))
    gauges: list[tuple[str, str, list[str]]] = [
        (
            "passerelle_stream_length",
            "Entries in the stream, processed or not.",
            [f'passerelle_stream_length{{stream="{_label(s)}"}} {n}' for s, n in lengths.items()],
        )
    ]
    fields = (
        ("lag", "Entries not yet delivered to the consumer group."),
        ("pending", "Entries delivered to the group and not acknowledged."),
        ("depth", "Work left for the group: lag plus pending."),
        ("oldest_age_seconds", "Age of the oldest entry waiting for the group."),
    )
    for field_name, help_text in fields:
        metric = f"passerelle_group_{field_name}"
        samples = []
        for g in groups:
            sample: float | None = (
                g.oldest_age_s if field_name == "oldest_age_seconds" else getattr(g, field_name)
            )
            labels = f'{{stream="{_label(g.stream)}",group="{_label(g.group)}"}}'
            samples.append(f"{metric}{labels} {0 if sample is None else sample}")
        gauges.append((metric, help_text, samples))
    for metric, help_text, samples in gauges:
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} gauge")
        lines.extend(samples)
    return "\n".join(lines) + "\n"
