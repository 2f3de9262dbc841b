"""Thin, idempotent drain tasks: they carry stream coordinates and call pipeline/delivery."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from structlog.contextvars import clear_contextvars

from broker import keys
from broker.adapters.spec import AdapterSpec, load_adapters
from broker.delivery.retry import exhausted, next_delay
from broker.delivery.send import Sender, make_sender
from broker.dispatch import DRAIN_INBOUND, DRAIN_OUTBOUND, REKICK, Kicker
from broker.envelope import Envelope, MessageState
from broker.errors import PermanentDeliveryError, RetryableDeliveryError
from broker.log import bind, get_logger
from broker.mapping import MappingSet
from broker.pipeline import envelope_from_journal, process
from broker.settings import Settings
from broker.streams import drainer_lock, has_work, read_batch

__all__ = ["Runtime", "drain_inbound", "drain_outbound", "register", "rekick"]

log = get_logger(__name__)


@dataclass
class Runtime:
    """What a worker process loads once: registrations, mappings, connections."""

    settings: Settings
    celery: Celery
    client: redis.Redis = field(init=False)
    adapters: dict[str, AdapterSpec] = field(init=False)
    subscribers: list[AdapterSpec] = field(init=False)
    mappings: MappingSet = field(init=False)
    kicker: Kicker = field(init=False)
    senders: dict[str, Sender] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.settings.effective_redis_url)
        specs = load_adapters(self.settings.adapters_dir)
        self.adapters = {spec.id: spec for spec in specs}
        self.subscribers = [s for s in specs if s.direction == "outbound" and s.enabled]
        self.mappings = MappingSet.load(self.settings.mappings_dir)
        self.kicker = Kicker(self.celery, self.client)

    def sender(self, subscriber: str) -> Sender:
        """The persistent sender of a subscriber in this process."""
        sender = self.senders.get(subscriber)
        if sender is None:
            sender = make_sender(
                self.adapters[subscriber], self.mappings, self.settings.delivery_timeout_s
            )
            self.senders[subscriber] = sender
        return sender


_runtime: Runtime | None = None
_settings: Settings | None = None
_celery: Celery | None = None


def runtime() -> Runtime:
    """This process's Runtime, built on first use (after Celery forked the pool process)."""
    global _runtime
    if _runtime is None:
        if _settings is None or _celery is None:
            raise RuntimeError("tasks.register() was not called in this process")
        _runtime = Runtime(_settings, _celery)
    return _runtime


def register(app: Celery, settings: Settings) -> None:
    """Register the drain tasks on ``app`` with the settings they run under."""
    global _settings, _celery
    _settings, _celery = settings, app
    app.task(name=DRAIN_INBOUND)(drain_inbound)
    app.task(name=DRAIN_OUTBOUND)(drain_outbound)
    app.task(name=REKICK)(rekick)


def drain_inbound(partition: int) -> int:
    """Map every journalled message of one partition in order; queue them for subscribers.

    Each batch commits atomically (MULTI): envelopes stored, outbound entries appended and the
    journal entries acknowledged together, so a killed worker leaves either nothing or all of
    it, and the next drainer re-reads what was not acknowledged.
    """
    rt = runtime()
    clear_contextvars()
    settings = rt.settings
    stream = keys.inbound(partition)
    rt.client.delete(keys.kick(stream))
    done = 0
    with drainer_lock(rt.client, stream, settings.claim_idle_s) as lock:
        if lock is None:
            return 0
        deadline = time.monotonic() + settings.drain_budget_s
        while time.monotonic() < deadline:
            entries = read_batch(rt.client, stream, keys.PIPELINE_GROUP, settings.batch_size)
            if not entries:
                break
            pipe = rt.client.pipeline(transaction=True)
            touched: set[str] = set()
            counts: dict[str, int] = {}
            for entry_id, fields in entries:
                try:
                    received = envelope_from_journal(entry_id, fields)
                    raw = fields[b"raw"]
                except (KeyError, ValueError):
                    # Never a poison pill: an entry this code cannot read is set aside, not retried.
                    reason = "the journal entry lacks id, source, received_at or raw"
                    pipe.xadd(
                        keys.QUARANTINE, {"entry": entry_id, "stream": stream, "reason": reason}
                    )
                    log.error("message.unreadable_entry", stream=stream, entry=entry_id)
                    counts["failed"] = counts.get("failed", 0) + 1
                    continue
                envelope, destinations = process(
                    received, raw, rt.mappings, rt.adapters, rt.subscribers
                )
                pipe.set(
                    keys.envelope(envelope.id), envelope.model_dump_json(), ex=settings.retention_s
                )
                if envelope.state is MessageState.FAILED:
                    pipe.xadd(
                        keys.QUARANTINE,
                        {
                            "envelope": envelope.id,
                            "source": envelope.source,
                            "reason": envelope.reason or "",
                        },
                    )
                    log.warning(
                        "message.failed",
                        envelope_id=envelope.id,
                        control_id=envelope.control_id,
                        adapter=envelope.source,
                        reason=envelope.reason,
                    )
                for destination in destinations:
                    pipe.xadd(keys.outbound(destination.id, partition), {"env": envelope.id})
                    touched.add(destination.id)
                counts[envelope.state.value] = counts.get(envelope.state.value, 0) + 1
            pipe.xack(stream, keys.PIPELINE_GROUP, *[entry_id for entry_id, _ in entries])
            for state, count in counts.items():
                pipe.hincrby(keys.STATS, state, count)
            pipe.execute()
            done += len(entries)
            for subscriber in touched:
                rt.kicker.kick(DRAIN_OUTBOUND, [subscriber, partition])
            if not lock.renew():
                break
    if has_work(rt.client, stream, keys.PIPELINE_GROUP):
        rt.kicker.kick(DRAIN_INBOUND, [partition], force=True)
    return done


def _dead_letter(
    rt: Runtime,
    pipe: Any,
    subscriber: str,
    entry_id: str,
    envelope_id: str,
    reason: str,
    attempts: list[dict[str, Any]],
) -> None:
    pipe.xadd(
        keys.dead(subscriber),
        {
            "entry": entry_id,
            "envelope": envelope_id,
            "reason": reason,
            "attempts": json.dumps(attempts),
            "at": str(time.time()),
        },
    )
    pipe.hincrby(keys.STATS, f"dead_lettered:{subscriber}", 1)
    pipe.hdel(keys.ATTEMPTS + subscriber, entry_id)
    log.error("delivery.dead_lettered", envelope_id=envelope_id, route=subscriber, reason=reason)


def drain_outbound(subscriber: str, partition: int) -> int:
    """Deliver one subscriber partition's queue in order; the head waits out its retries.

    A retryable failure stops the partition (later messages of those patients wait behind it)
    and schedules the next attempt after the backoff; other partitions go on.
    """
    rt = runtime()
    clear_contextvars()
    settings = rt.settings
    stream = keys.outbound(subscriber, partition)
    rt.client.delete(keys.kick(stream))
    adapter = rt.adapters.get(subscriber)
    if adapter is None:
        log.error("delivery.unknown_subscriber", route=subscriber)
        return 0
    hold = rt.client.get(keys.hold(subscriber, partition))
    # A little slack: the retry's countdown and the hold mark come from different clocks.
    if hold is not None and float(hold) > time.time() + 0.5:
        return 0
    delivered = 0
    with drainer_lock(rt.client, stream, settings.claim_idle_s) as lock:
        if lock is None:
            return 0
        sender = rt.sender(subscriber)
        deadline = time.monotonic() + settings.drain_budget_s
        stop = False
        while not stop and time.monotonic() < deadline:
            entries = read_batch(rt.client, stream, keys.DELIVER_GROUP, settings.batch_size)
            if not entries:
                break
            ids = [fields.get(b"env", b"").decode() for _, fields in entries]
            raw_envelopes = rt.client.mget([keys.envelope(i) for i in ids])
            acked: list[str] = []
            batch_delivered = 0
            pipe = rt.client.pipeline(transaction=True)
            for (entry_id, _), envelope_id, raw in zip(entries, ids, raw_envelopes, strict=True):
                if raw is None:
                    _dead_letter(
                        rt,
                        pipe,
                        subscriber,
                        entry_id,
                        envelope_id,
                        "the envelope expired before delivery",
                        [],
                    )
                    acked.append(entry_id)
                    continue
                envelope = Envelope.model_validate_json(raw)
                bind(
                    envelope_id=envelope.id,
                    correlation_id=envelope.correlation_id,
                    route=subscriber,
                )
                try:
                    reply = sender.send(envelope)
                except RetryableDeliveryError as exc:
                    attempts = _record_attempt(rt, subscriber, entry_id, exc)
                    if exhausted(adapter.retry, len(attempts)):
                        _dead_letter(
                            rt, pipe, subscriber, entry_id, envelope_id, str(exc), attempts
                        )
                        acked.append(entry_id)
                        continue
                    delay = next_delay(adapter.retry, len(attempts))
                    rt.client.set(
                        keys.hold(subscriber, partition),
                        str(time.time() + delay),
                        ex=int(delay) + 60,
                    )
                    rt.celery.send_task(
                        DRAIN_OUTBOUND, args=[subscriber, partition], countdown=delay
                    )
                    log.warning(
                        "delivery.retrying",
                        envelope_id=envelope_id,
                        route=subscriber,
                        attempt=len(attempts),
                        delay_s=round(delay, 2),
                        error=str(exc),
                    )
                    stop = True
                    break
                except PermanentDeliveryError as exc:
                    attempts = _record_attempt(rt, subscriber, entry_id, exc)
                    _dead_letter(rt, pipe, subscriber, entry_id, envelope_id, str(exc), attempts)
                    acked.append(entry_id)
                    continue
                except Exception as exc:
                    # A bug in rendering must not block the partition forever: park the message
                    # (replayable once fixed) and let the patients behind it through.
                    log.exception(
                        "delivery.internal_error", envelope_id=envelope_id, route=subscriber
                    )
                    reason = f"internal error while rendering or sending ({type(exc).__name__}); see the worker log"
                    attempts = _record_attempt(rt, subscriber, entry_id, exc)
                    _dead_letter(rt, pipe, subscriber, entry_id, envelope_id, reason, attempts)
                    acked.append(entry_id)
                    continue
                acked.append(entry_id)
                delivered += 1
                batch_delivered += 1
                log.debug("delivery.sent", envelope_id=envelope_id, route=subscriber, reply=reply)
                lock.renew()
            if acked:
                pipe.xack(stream, keys.DELIVER_GROUP, *acked)
                pipe.hincrby(keys.STATS, f"delivered:{subscriber}", batch_delivered)
                pipe.hdel(keys.ATTEMPTS + subscriber, *acked)
            pipe.execute()
            log.info("delivery.batch", route=subscriber, partition=partition, handled=len(acked))
    if not stop and has_work(rt.client, stream, keys.DELIVER_GROUP):
        rt.kicker.kick(DRAIN_OUTBOUND, [subscriber, partition], force=True)
    return delivered


def _record_attempt(
    rt: Runtime, subscriber: str, entry_id: str, exc: Exception
) -> list[dict[str, Any]]:
    key = keys.ATTEMPTS + subscriber
    previous = rt.client.hget(key, entry_id)
    attempts: list[dict[str, Any]] = json.loads(previous) if previous else []
    attempts.append({"at": time.time(), "error": str(exc), "reply": getattr(exc, "reply", None)})
    rt.client.hset(key, entry_id, json.dumps(attempts))
    return attempts


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
