"""The Celery tasks: thin wrappers that build a drain's arguments from this process's runtime.

The tasks carry stream coordinates (a partition, a subscriber, a patient key), never patient
data, and call the plain functions that hold the logic: ``broker.worker.inline`` (the journal
drain of ``broker.pipeline.drain``, then the delivery drains it fed), ``broker.delivery.drain``, ``broker.delivery.release``, ``broker.delivery.acks`` and
``broker.ops.housekeeping``. Each is idempotent: a redelivered task finds the work done or does
it once more, in order.
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from broker import keys, standby
from broker.adapters.mllp import MllpClient
from broker.delivery import acks, drain, release
from broker.dispatch import DRAIN_APP_ACKS, DRAIN_INBOUND, DRAIN_OUTBOUND, REKICK, RELEASE_PATIENT
from broker.log import get_logger
from broker.ops import housekeeping
from broker.settings import Settings
from broker.worker import inline, profiling
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
_return_addresses: dict[str, MllpClient] = {}
"""This process's connection to each enhanced-mode source's return address, kept between tasks."""


def register(app: Celery, settings: Settings) -> None:
    """Register the tasks on ``app`` with the settings they run under."""
    configure(app, settings)
    profiling.install()
    app.task(name=DRAIN_INBOUND)(drain_inbound)
    app.task(name=DRAIN_OUTBOUND)(drain_outbound)
    app.task(name=RELEASE_PATIENT)(release_patient)
    app.task(name=DRAIN_APP_ACKS)(drain_app_acks)
    app.task(name=REKICK)(rekick)


def drain_inbound(partition: int) -> int:
    """Map journal partition ``partition``, then deliver what it fed (``broker.worker.inline``);
    then stand by for the next drains handed over (``broker.standby``)."""
    rt = runtime()
    done = _drain_and_deliver(rt, partition)
    standby.stand_by(
        rt.client,
        run=lambda task, args: _STANDBY_RUNS[task](rt, *args),
        kicker=rt.kicker,
        budget_s=rt.settings.standby_s,
        most_waiters=max(1, rt.settings.workers // 2),
    )
    return done


def _drain_and_deliver(rt: Runtime, partition: int) -> int:
    return inline.drain_and_deliver(
        rt.client,
        partition,
        mappings=rt.watcher.current,
        adapters=rt.adapters,
        subscribers=rt.subscribers,
        kicker=rt.kicker,
        settings=rt.settings,
        sender=rt.sender,
    )


def drain_outbound(subscriber: str, partition: int) -> int:
    """Deliver one subscriber partition's queue (``broker.delivery.drain.drain_outbound``)."""
    return _drain_outbound(runtime(), subscriber, partition)


def _drain_outbound(rt: Runtime, subscriber: str, partition: int) -> int:
    spec = rt.adapters.get(subscriber)
    if spec is None:
        stream = keys.outbound(subscriber, partition)
        return _unknown(rt, stream, "delivery.unknown_subscriber", route=subscriber)
    return drain.drain_outbound(
        rt.client,
        spec,
        partition,
        sender=rt.sender(subscriber),
        kicker=rt.kicker,
        settings=rt.settings,
    )


_STANDBY_RUNS: dict[str, Callable[..., int]] = {
    DRAIN_INBOUND: _drain_and_deliver,
    DRAIN_OUTBOUND: _drain_outbound,
}
"""What a worker in standby runs for each kind of drain handed to it (``broker.standby``)."""


def release_patient(subscriber: str, patient: str) -> int:
    """Release a held patient (``broker.delivery.release.release_patient``)."""
    rt = runtime()
    spec = rt.adapters.get(subscriber)
    if spec is None:
        return _unknown(rt, None, "delivery.unknown_subscriber", route=subscriber)
    return release.release_patient(
        rt.client,
        spec,
        patient,
        sender=rt.sender(subscriber),
        kicker=rt.kicker,
        settings=rt.settings,
    )


def drain_app_acks(source: str) -> int:
    """Send one enhanced-mode source's application ACKs (``broker.delivery.acks``)."""
    rt = runtime()
    spec = rt.adapters.get(source)
    connection = _return_addresses.get(source)
    if connection is None and spec is not None:
        connection = acks.return_address(spec)
        if connection is not None:
            _return_addresses[source] = connection
    if spec is None or connection is None:
        return _unknown(rt, keys.app_acks(source), "ack.no_return_address", adapter=source)
    return acks.drain_app_acks(
        rt.client, spec, connection=connection, kicker=rt.kicker, settings=rt.settings
    )


def rekick() -> int:
    """Beat's periodic task: re-kick, trim and backpressure (``broker.ops.housekeeping``)."""
    rt = runtime()
    return housekeeping.rekick(
        rt.client,
        adapters=rt.adapters.values(),
        subscribers=rt.subscribers,
        kicker=rt.kicker,
        settings=rt.settings,
    )


def _unknown(rt: Runtime, stream: str | None, event: str, **context: str) -> int:
    """A task for an adapter this process cannot serve: its kick flag cleared, logged, 0 done."""
    if stream is not None:
        rt.client.delete(keys.kick(stream))
    log.error(event, **context)
    return 0
