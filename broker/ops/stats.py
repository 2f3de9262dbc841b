"""Queue and counter statistics read from Redis now: depth, lag, pending, age of oldest, counters.

Every number comes from Redis itself (``XINFO GROUPS``, ``XPENDING``, ``XRANGE`` and the
``pl:stats`` hash), so any process can compute them and they survive restarts. Stream entry ids
start with their creation time in milliseconds, which gives the age of the oldest waiting entry.

Redis 7 reports a group's ``lag`` in ``XINFO GROUPS``; the embedded Redis 6.2 does not, so there
the entries after the group's last-delivered id are counted with ``XRANGE``, up to ``lag_cap``
(``lag_exact`` is false beyond it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from broker import keys

__all__ = [
    "GroupStats",
    "Snapshot",
    "counters",
    "group_stats",
    "parked",
    "snapshot",
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


def parked(client: redis.Redis, subscriber: str) -> int:
    """Messages parked behind the subscriber's dead letters (every ``pl:parked:SUB:PK``).

    Read from the held patients (``pl:held:SUB``: patient → the dead letter holding it), not by
    scanning the keyspace: a patient's messages are parked only while a dead letter holds that
    patient. While that dead letter is open its own message heads the parked stream; it is
    counted among the open dead letters, not here, so that every view counts one message once
    (the message store has it ``dead_lettered``, its later ones ``parked``).
    """
    held: Any = client.hgetall(keys.held(subscriber))
    if not held:
        return 0
    pipe = client.pipeline(transaction=False)
    for patient, dead_id in held.items():
        pipe.xlen(keys.parked(subscriber, _text(patient)))
        pipe.sismember(keys.dead_open(subscriber), dead_id)
    replies = pipe.execute()
    lengths, open_heads = replies[::2], replies[1::2]
    return sum(
        max(int(n) - int(bool(head)), 0) for n, head in zip(lengths, open_heads, strict=True)
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every queue of the broker read at one moment, for the API, the metrics and the samples.

    Attributes:
        at: when it was read, epoch seconds.
        counters: the ``pl:stats`` hash.
        inbound: the pipeline group on each journal partition, by partition.
        outbound: per subscriber, the deliver group on each of its partitions, by partition.
        parked: per subscriber, messages parked behind its dead letters.
        dead_letters: per subscriber, the length of its dead-letter stream.
        rejected: entries of ``pl:rejected``.
        quarantine: entries of ``pl:quarantine``.
        memory_used: Redis's ``used_memory``, bytes.
        memory_limit: Redis's ``maxmemory``, bytes; 0 when unlimited.
        pressure: why backpressure is on (``pl:pressure``), ``None`` when it is off.
    """

    at: float
    counters: dict[str, int]
    inbound: dict[int, GroupStats]
    outbound: dict[str, dict[int, GroupStats]]
    parked: dict[str, int]
    dead_letters: dict[str, int]
    rejected: int
    quarantine: int
    memory_used: int
    memory_limit: int
    pressure: str | None

    @property
    def journal_backlog(self) -> int:
        """Journalled messages the pipeline has not finished: undelivered plus pending."""
        return sum(g.depth for g in self.inbound.values())

    def backlog(self, subscriber: str) -> int:
        """Messages waiting for one subscriber: undelivered plus pending (parked excluded)."""
        return sum(g.depth for g in self.outbound.get(subscriber, {}).values())


def snapshot(
    client: redis.Redis,
    partitions: int,
    *,
    registered: Sequence[str] | None = None,
    now: float | None = None,
    lag_cap: int = 100_000,
) -> Snapshot:
    """Read every queue once: journal partitions, subscribers' partitions, parked, memory.

    Args:
        client: the Redis client.
        partitions: ``Settings.partitions``: the journal streams are ``pl:in:0`` … ``P-1``.
        registered: the subscribers to read, each on partitions ``0`` … ``P-1``; ``None``:
            those that have an outbound stream, on the partitions found (a keyspace scan).
        now: the current time in epoch seconds (for tests).
        lag_cap: the most entries counted per stream when Redis does not report the lag.
    """
    now = time.time() if now is None else now
    inbound = {
        p: group_stats(client, keys.inbound(p), keys.PIPELINE_GROUP, now=now, lag_cap=lag_cap)
        for p in range(partitions)
    }
    if registered is None:
        found = {sub: _subscriber_partitions(client, sub) for sub in subscribers(client)}
    else:
        found = {sub: list(range(partitions)) for sub in registered}
    outbound = {
        sub: {
            p: group_stats(
                client, keys.outbound(sub, p), keys.DELIVER_GROUP, now=now, lag_cap=lag_cap
            )
            for p in parts
        }
        for sub, parts in found.items()
    }
    memory: Any = client.info("memory")
    pressure: Any = client.get(keys.PRESSURE)
    return Snapshot(
        at=now,
        counters=counters(client),
        inbound=inbound,
        outbound=outbound,
        parked={sub: parked(client, sub) for sub in found},
        dead_letters={sub: int(client.xlen(keys.dead(sub))) for sub in found},
        rejected=int(client.xlen(keys.REJECTED)),
        quarantine=int(client.xlen(keys.QUARANTINE)),
        memory_used=int(memory.get("used_memory", 0)),
        memory_limit=int(memory.get("maxmemory", 0)),
        pressure=None if pressure is None else _text(pressure),
    )
