"""Celery task registration, the periodic re-kick and the retention trim.

The tasks are thin: they carry stream coordinates (a partition, a subscriber, a patient key),
never patient data, and call ``worker.inbound`` / ``worker.outbound``. Each is idempotent: a
redelivered task finds the work done or does it once more, in order.
"""

from __future__ import annotations

import time

from celery import Celery

from broker import keys
from broker.dispatch import DRAIN_INBOUND, DRAIN_OUTBOUND, REKICK, RELEASE_PATIENT
from broker.settings import Settings
from broker.streams import has_work
from broker.worker.inbound import drain_inbound
from broker.worker.outbound import drain_outbound, release_patient
from broker.worker.runtime import Runtime, configure, runtime

__all__ = ["drain_inbound", "drain_outbound", "register", "rekick", "release_patient"]


def register(app: Celery, settings: Settings) -> None:
    """Register the tasks on ``app`` with the settings they run under."""
    configure(app, settings)
    app.task(name=DRAIN_INBOUND)(drain_inbound)
    app.task(name=DRAIN_OUTBOUND)(drain_outbound)
    app.task(name=RELEASE_PATIENT)(release_patient)
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
    _trim(rt)
    return kicked


def _trim(rt: Runtime) -> None:
    """Drop journal and queue entries older than the retention, at most once a minute.

    XTRIM MINID cuts by entry id, i.e. by arrival time; an entry is processed within seconds,
    so only entries long done fall out. Dead letters, rejections and quarantine are kept.
    """
    if not rt.client.set(keys.TRIMMED, b"1", nx=True, ex=60):
        return
    oldest = f"{int((time.time() - rt.settings.retention_s) * 1000)}-0"
    pipe = rt.client.pipeline(transaction=False)
    for partition in range(rt.settings.partitions):
        pipe.xtrim(keys.inbound(partition), minid=oldest, approximate=False)
        for sub in rt.subscribers:
            pipe.xtrim(keys.outbound(sub.id, partition), minid=oldest, approximate=False)
    pipe.execute()
