"""Celery task registration, the periodic re-kick and the retention trim.

The tasks are thin: they carry stream coordinates (a partition, a subscriber, a patient key),
never patient data, and call ``worker.inbound`` / ``worker.outbound``. Each is idempotent: a
redelivered task finds the work done or does it once more, in order.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from celery import Celery

from broker import keys
from broker.delivery.acks import drain_app_acks
from broker.delivery.drain import drain_outbound, release_patient
from broker.dispatch import DRAIN_APP_ACKS, DRAIN_INBOUND, DRAIN_OUTBOUND, REKICK, RELEASE_PATIENT
from broker.log import get_logger
from broker.ops.stats import group_stats
from broker.pipeline.drain import drain_inbound
from broker.settings import Settings
from broker.streams import has_work
from broker.worker.runtime import Runtime, configure, runtime

__all__ = [
    "drain_app_acks",
    "drain_inbound",
    "drain_outbound",
    "register",
    "rekick",
    "release_patient",
]

log = get_logger(__name__)


def register(app: Celery, settings: Settings) -> None:
    """Register the tasks on ``app`` with the settings they run under."""
    configure(app, settings)
    app.task(name=DRAIN_INBOUND)(drain_inbound)
    app.task(name=DRAIN_OUTBOUND)(drain_outbound)
    app.task(name=RELEASE_PATIENT)(release_patient)
    app.task(name=DRAIN_APP_ACKS)(drain_app_acks)
    app.task(name=REKICK)(rekick)


def rekick() -> int:
    """Queue a drain for every stream with work and no live drainer (lost tasks, dead workers)."""
    rt = runtime()
    kicked = 0
    now = time.time()
    for partition in range(rt.settings.partitions):
        stream = keys.inbound(partition)
        if not rt.client.exists(keys.lock(stream)) and has_work(
            rt.client, stream, keys.PIPELINE_GROUP
        ):
            kicked += rt.kicker.kick(DRAIN_INBOUND, [partition], force=True)
        for sub in rt.subscribers:
            out = keys.outbound(sub.id, partition)
            hold = rt.client.get(keys.hold(sub.id, partition))
            if hold is not None and float(hold) > now:
                continue
            if not rt.client.exists(keys.lock(out)) and has_work(
                rt.client, out, keys.DELIVER_GROUP
            ):
                kicked += rt.kicker.kick(DRAIN_OUTBOUND, [sub.id, partition], force=True)
    for source in rt.adapters.values():
        if source.ack_mode == "enhanced":
            acks = keys.app_acks(source.id)
            if not rt.client.exists(keys.lock(acks)) and has_work(
                rt.client, acks, keys.DELIVER_GROUP
            ):
                kicked += rt.kicker.kick(DRAIN_APP_ACKS, [source.id], force=True)
    _trim(rt)
    _pressure(rt)
    return kicked


def _pressure(rt: Runtime) -> None:
    """Turn backpressure on while a subscriber's backlog or Redis memory is over its limit.

    The mark expires by itself three periods after the last check that found pressure, so a
    stopped beat cannot leave the listeners refusing forever.
    """
    reasons = []
    limit_backlog = rt.settings.max_backlog
    for sub in rt.subscribers:
        waiting = 0
        for p in range(rt.settings.partitions):
            # Redis 6.2 reports no lag: counting stops once the limit is known to be passed.
            stats = group_stats(
                rt.client, keys.outbound(sub.id, p), keys.DELIVER_GROUP, lag_cap=limit_backlog + 1
            )
            waiting += stats.depth
            if waiting > limit_backlog:
                break
        if waiting > limit_backlog:
            reasons.append(f"subscriber {sub.id} has over {limit_backlog} messages waiting")
    memory: Any = rt.client.info("memory")
    limit = int(memory.get("maxmemory", 0))
    used = int(memory.get("used_memory", 0))
    if limit and used > limit * rt.settings.max_memory_ratio:
        reasons.append(f"the journal uses {used * 100 // limit}% of its memory limit")
    if reasons:
        rt.client.set(
            keys.PRESSURE, "; ".join(reasons), ex=max(1, int(rt.settings.rekick_interval_s * 3))
        )
        log.warning("backpressure.on", reasons=reasons)
    elif rt.client.delete(keys.PRESSURE):
        log.info("backpressure.off")


def _trim(rt: Runtime) -> None:
    """Drop journal and queue entries older than the retention, at most once a minute.

    XTRIM MINID cuts by entry id, i.e. by arrival time; an entry is processed within seconds,
    so only entries long done fall out. An entry its consumer group has not yet read, or read
    and not acknowledged, is never cut however old: the cut stops at the oldest of them, so a
    drain still reaches it (a queued message whose envelope expired becomes a dead letter, §6 of
    docs/reliability.md). Dead letters, rejections and quarantine are kept.
    """
    if not rt.client.set(keys.TRIMMED, b"1", nx=True, ex=60):
        return
    cutoff = _stream_id(f"{int((time.time() - rt.settings.retention_s) * 1000)}-0")
    streams = []
    for partition in range(rt.settings.partitions):
        streams.append((keys.inbound(partition), keys.PIPELINE_GROUP))
        streams.extend(
            (keys.outbound(sub.id, partition), keys.DELIVER_GROUP) for sub in rt.subscribers
        )
    pipe = rt.client.pipeline(transaction=False)
    for stream, group in streams:
        floor = _undone_floor(rt.client, stream, group)
        minid = cutoff if floor is None else min(cutoff, floor)
        if minid > (0, 0):
            pipe.xtrim(stream, minid=f"{minid[0]}-{minid[1]}", approximate=False)
    pipe.execute()


def _stream_id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id (``ms-seq``) as a comparable pair."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _stream_text(value: bytes | str) -> str:
    """A name Redis returned, as text."""
    return value.decode() if isinstance(value, bytes) else value


def _undone_floor(client: redis.Redis, stream: str, group: str) -> tuple[int, int] | None:
    """The id of the oldest entry of ``stream`` that ``group`` has not finished, or ``None``.

    Unfinished: read and not acknowledged (the pending list's smallest id), or not read yet
    (after the group's last-delivered id). A stream without the group is all unfinished.
    """
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None  # no such stream: nothing to trim
    info = next((g for g in groups if _stream_text(g["name"]) == group), None)
    if info is None:
        return (0, 0)
    floors = []
    if int(info["pending"]):
        summary: Any = client.xpending(stream, group)
        if summary and summary.get("min"):
            floors.append(_stream_id(summary["min"]))
    last = _stream_id(info["last-delivered-id"])
    floors.append((last[0], last[1] + 1))
    return min(floors)
