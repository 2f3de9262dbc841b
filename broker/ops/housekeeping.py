"""Housekeeping beat runs every ``rekick_interval_s``: re-kick idle streams, trim, backpressure.

- :func:`rekick` queues a drain for every stream with work and no live drainer, so a lost task
  or a dead worker costs a delay, never a message (docs/reliability.md §2).
- :func:`trim` drops journal and queue entries once done (stored, with the message store's
  writer; older than the retention, without), never unfinished ones.
- :func:`pressure` turns backpressure on while a backlog or Redis memory is over its limit.
- :func:`check_alerts` evaluates Passerelle's own alert rules (:mod:`broker.ops.alerts`) and
  notifies each incident's opening and recovery once.

Plain functions over Redis: beat's task (``broker.worker.tasks``) and
``broker.testing.EagerBroker`` call them with the registrations, a kicker and the settings.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from broker import keys, standby
from broker.adapters.spec import AdapterSpec
from broker.dispatch import DRAIN_APP_ACKS, DRAIN_INBOUND, DRAIN_OUTBOUND, Kicker
from broker.errors import SpecError
from broker.log import get_logger
from broker.ops import alerts, notify, rates
from broker.ops.retention import purge_redis
from broker.ops.stats import group_stats
from broker.settings import Settings
from broker.streams import idle_with_work, stream_id, undone_floor

__all__ = ["check_alerts", "index_dead_letters", "pressure", "rekick", "trim", "undone_floor"]

log = get_logger(__name__)
PURGE_INTERVAL_S = 600
"""How often beat purges rejected input, quarantine and resolved dead letters by age."""
_INDEX_OPEN = """
redis.call('DEL', KEYS[2])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if cjson.decode(all[i + 1])['status'] == 'open' then
    redis.call('SADD', KEYS[2], all[i])
  end
end
return redis.call('SCARD', KEYS[2])
"""


def rekick(
    client: redis.Redis,
    *,
    adapters: Iterable[AdapterSpec],
    subscribers: Sequence[AdapterSpec],
    kicker: Kicker,
    settings: Settings,
) -> int:
    """Queue a drain for every stream with work and no live drainer (lost tasks, dead workers).

    A partition waiting out a retry's back-off (``pl:hold:SUB:P``) is left to its scheduled
    retry. Then :func:`trim`, the Redis purge (``broker.ops.retention``), :func:`pressure`, the rates' sample and :func:`check_alerts`
    run, as beat's one periodic task.

    Args:
        client: the broker's Redis.
        adapters: every registration (enhanced-mode sources have application ACKs to send).
        subscribers: the enabled outbound adapters.
        kicker: queues the drains (forced: a lost task's kick flag must not stop it).
        settings: ``partitions``, ``retention_s``, ``max_backlog``, ``max_memory_ratio`` and
            ``rekick_interval_s``.

    Returns:
        How many drains were queued.
    """
    kicked = standby.sweep(client, kicker)
    adapters = list(adapters)
    # Every stream in one script call (one round trip, not four per stream: ~100 every period
    # with 8 partitions and two subscribers, most of an idle worker's CPU).
    drains: list[tuple[str, list[Any]]] = []
    streams: list[tuple[str, str, str | None]] = []
    for partition in range(settings.partitions):
        drains.append((DRAIN_INBOUND, [partition]))
        streams.append((keys.inbound(partition), keys.PIPELINE_GROUP, None))
        for sub in subscribers:
            drains.append((DRAIN_OUTBOUND, [sub.id, partition]))
            out = keys.outbound(sub.id, partition)
            streams.append((out, keys.DELIVER_GROUP, keys.hold(sub.id, partition)))
    for source in adapters:
        if source.ack_mode == "enhanced":
            drains.append((DRAIN_APP_ACKS, [source.id]))
            streams.append((keys.app_acks(source.id), keys.DELIVER_GROUP, None))
    for index in idle_with_work(client, streams, now=time.time()):
        task, args = drains[index]
        kicked += kicker.kick(task, args, force=True)
    trim(client, subscribers=subscribers, settings=settings)
    if client.set(keys.PURGED, b"1", nx=True, ex=PURGE_INTERVAL_S):
        purged = purge_redis(client, settings)
        if any(purged.values()):
            log.info("redis.purged", **purged)
    pressure(client, subscribers=subscribers, settings=settings)
    rates.record(client, registered=[sub.id for sub in subscribers], settings=settings)
    index_dead_letters(client)
    check_alerts(client, adapters=adapters, subscribers=subscribers, settings=settings)
    return kicked


def _text(value: bytes | str) -> str:
    """A name Redis returned, as text."""
    return value.decode() if isinstance(value, bytes) else value


def index_dead_letters(client: redis.Redis) -> int:
    """Build the open dead letters' index from the records, once per Redis (an upgrade from a
    version without it); return how many subscribers were indexed (0 once done).

    A Lua script per subscriber, so no status change can slip between reading and indexing.
    """
    if not client.set(keys.DEAD_OPEN_INDEXED, b"1", nx=True):
        return 0
    index = client.register_script(_INDEX_OPEN)
    prefix = keys.dead_records("")
    found = [_text(k) for k in client.scan_iter(match=f"{prefix}*", count=1_000)]
    for key in found:
        sub = key.removeprefix(prefix)
        opened = index(keys=[key, keys.dead_open(sub)])
        log.info("dead_letters.indexed", route=sub, open=opened)
    return len(found)


def check_alerts(
    client: redis.Redis,
    *,
    adapters: Iterable[AdapterSpec],
    subscribers: Sequence[AdapterSpec],
    settings: Settings,
    now: float | None = None,
) -> list[notify.Notice]:
    """Evaluate the alert rules of ``settings.alerts_file`` (re-read each time: an edit applies
    at the next run); an invalid file is logged with its file and line, and nothing evaluated.

    Returns:
        The notices sent (incidents opened or recovered by this run).
    """
    try:
        rules = alerts.load_rules(settings.alerts_file)
    except SpecError as exc:
        log.error("alert.rules_invalid", error=str(exc))
        return []
    inbound = [a for a in adapters if a.direction == "inbound" and a.enabled]
    return alerts.evaluate(
        client,
        rules,
        subscribers=[sub.id for sub in subscribers],
        inbound=[a.id for a in inbound],
        listeners=[(a.id, *a.host_port) for a in inbound if a.transport == "mllp"],
        partitions=settings.partitions,
        channels=notify.notifiers(settings),
        now=now,
    )


def pressure(
    client: redis.Redis, *, subscribers: Sequence[AdapterSpec], settings: Settings
) -> None:
    """Turn backpressure on while a subscriber's backlog or Redis memory is over its limit.

    The mark (``pl:pressure``, read by the listeners and the API) expires by itself three
    periods after the last check that found pressure, so a stopped beat cannot leave the
    listeners refusing forever.
    """
    reasons = []
    limit_backlog = settings.max_backlog
    for sub in subscribers:
        waiting = 0
        for p in range(settings.partitions):
            # Redis 6.2 reports no lag: counting stops once the limit is known to be passed.
            stats = group_stats(
                client, keys.outbound(sub.id, p), keys.DELIVER_GROUP, lag_cap=limit_backlog + 1
            )
            waiting += stats.depth
            if waiting > limit_backlog:
                break
        if waiting > limit_backlog:
            reasons.append(f"subscriber {sub.id} has over {limit_backlog} messages waiting")
    memory: Any = client.info("memory")
    limit = int(memory.get("maxmemory", 0))
    used = int(memory.get("used_memory", 0))
    if limit and used > limit * settings.max_memory_ratio:
        reasons.append(f"the journal uses {used * 100 // limit}% of its memory limit")
    if reasons:
        client.set(
            keys.PRESSURE, "; ".join(reasons), ex=max(1, int(settings.rekick_interval_s * 3))
        )
        log.warning("backpressure.on", reasons=reasons)
    elif client.delete(keys.PRESSURE):
        log.info("backpressure.off")


def trim(client: redis.Redis, *, subscribers: Sequence[AdapterSpec], settings: Settings) -> None:
    """Drop the journal and queue entries nothing needs any more, at most once a minute.

    With the message store's writer (its marks in ``pl:stored``), an entry goes once it is
    done: a journal entry once the pipeline acknowledged it and the store holds its message (up
    to its partition's mark: the writer reads the raw bytes from it), a queue entry once its
    delivery drain acknowledged it (its attempt's record went to ``pl:store`` in that MULTI).
    Without a writer, entries go once older than the retention, as they always did; and if the
    writer stops, the retention still applies.

    XTRIM MINID cuts by entry id, i.e. by arrival time. An entry its consumer group has not yet
    read, or read and not acknowledged, is never cut however old: the cut stops at the oldest
    of them, so a drain still reaches it (a queued message whose envelope expired becomes a
    dead letter, §6 of docs/reliability.md). Dead letters, rejections and quarantine have their own
    retention (``broker.ops.retention``, run by :func:`rekick` every ``PURGE_INTERVAL_S``).
    """
    if not client.set(keys.TRIMMED, b"1", nx=True, ex=60):
        return
    cutoff = stream_id(f"{int((time.time() - settings.retention_s) * 1000)}-0")
    marks: dict[bytes, bytes] = client.hgetall(keys.STORED)
    streams: list[tuple[str, str, tuple[int, int]]] = []
    for partition in range(settings.partitions):
        mark = marks.get(str(partition).encode())
        stored = stream_id(mark) if mark else (0, 0)
        journal_cut = max(cutoff, (stored[0], stored[1] + 1)) if mark else cutoff
        streams.append((keys.inbound(partition), keys.PIPELINE_GROUP, journal_cut))
        # Acknowledged is done: (2**63, 0) leaves the cut to the consumer group's floor alone.
        queue_cut = (2**63, 0) if marks else cutoff
        streams.extend(
            (keys.outbound(sub.id, partition), keys.DELIVER_GROUP, queue_cut) for sub in subscribers
        )
    pipe = client.pipeline(transaction=False)
    for stream, group, cut in streams:
        floor = undone_floor(client, stream, group)
        if floor is None:
            continue  # no such stream
        minid = min(cut, floor)
        if minid > (0, 0):
            pipe.xtrim(stream, minid=f"{minid[0]}-{minid[1]}", approximate=False)
    pipe.execute()
