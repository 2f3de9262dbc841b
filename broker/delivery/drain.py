"""The delivery drain: one subscriber partition's queue, in order, with retries and holds.

The head of a partition waits out its retries (a retryable failure stops the partition and
schedules the next attempt). A message refused for good, or out of retries, becomes a dead
letter; under ``on_exhausted: hold`` its patient's later messages are parked behind it while the
other patients of the partition go on. ``release_patient`` delivers a held patient's parked
messages, in order, once an operator replayed or discarded the dead letter.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from structlog.contextvars import clear_contextvars

from broker import keys
from broker.adapters.spec import AdapterSpec
from broker.delivery.retry import exhausted, next_delay
from broker.dispatch import DRAIN_OUTBOUND, RELEASE_PATIENT, publish
from broker.envelope import Envelope
from broker.errors import PermanentDeliveryError, RetryableDeliveryError
from broker.log import bind, get_logger
from broker.streams import drainer_lock, has_work, read_batch
from broker.worker.runtime import Runtime, runtime

__all__ = ["drain_outbound", "release_patient"]

log = get_logger(__name__)
# A retry's countdown and the hold mark come from different clocks: a little slack.
_HOLD_SLACK_S = 0.5


@dataclass
class _Outcome:
    """What sending one message came to."""

    delivered: bool = False
    retry_after: float | None = None
    dead: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""


def _attempt(
    rt: Runtime, subscriber: str, entry_id: str, exc: BaseException
) -> list[dict[str, Any]]:
    key = keys.ATTEMPTS + subscriber
    previous = rt.client.hget(key, entry_id)
    attempts: list[dict[str, Any]] = json.loads(previous) if previous else []
    attempts.append({"at": time.time(), "error": str(exc), "reply": getattr(exc, "reply", None)})
    rt.client.hset(key, entry_id, json.dumps(attempts))
    return attempts


def _send(rt: Runtime, adapter: AdapterSpec, entry_id: str, envelope: Envelope) -> _Outcome:
    """Send one envelope and classify the result; never raises for a delivery problem."""
    bind(envelope_id=envelope.id, correlation_id=envelope.correlation_id, route=adapter.id)
    try:
        rt.sender(adapter.id).send(envelope)
    except RetryableDeliveryError as exc:
        attempts = _attempt(rt, adapter.id, entry_id, exc)
        age = time.time() - attempts[0]["at"]
        if exhausted(adapter.retry, len(attempts), age):
            return _Outcome(dead=True, attempts=attempts, reason=f"retries exhausted: {exc}")
        delay = next_delay(adapter.retry, len(attempts))
        log.warning(
            "delivery.retrying", attempt=len(attempts), delay_s=round(delay, 2), error=str(exc)
        )
        return _Outcome(retry_after=delay, attempts=attempts)
    except PermanentDeliveryError as exc:
        return _Outcome(
            dead=True, attempts=_attempt(rt, adapter.id, entry_id, exc), reason=str(exc)
        )
    except Exception as exc:
        # A bug in rendering must not block the partition forever: park the message
        # (replayable once fixed) and let the patients behind it through.
        log.exception("delivery.internal_error")
        reason = (
            f"internal error while rendering or sending ({type(exc).__name__}); see the worker log"
        )
        return _Outcome(dead=True, attempts=_attempt(rt, adapter.id, entry_id, exc), reason=reason)
    return _Outcome(delivered=True)


def drain_outbound(subscriber: str, partition: int) -> int:
    """Deliver one subscriber partition's queue in order; return how many were delivered."""
    rt = runtime()
    clear_contextvars()
    stream = keys.outbound(subscriber, partition)
    rt.client.delete(keys.kick(stream))
    adapter = rt.adapters.get(subscriber)
    if adapter is None:
        log.error("delivery.unknown_subscriber", route=subscriber)
        return 0
    hold = rt.client.get(keys.hold(subscriber, partition))
    if hold is not None and float(hold) > time.time() + _HOLD_SLACK_S:
        return 0
    delivered = 0
    stopped = False
    with drainer_lock(rt.client, stream, rt.settings.claim_idle_s) as lock:
        if lock is None:
            return 0
        deadline = time.monotonic() + rt.settings.drain_budget_s
        first = True
        while not stopped and time.monotonic() < deadline:
            entries = read_batch(
                rt.client,
                stream,
                keys.DELIVER_GROUP,
                rt.settings.batch_size,
                pending=first,
            )
            first = False
            if not entries:
                break
            ids = [f.get(b"env", b"").decode() for _, f in entries]
            patients = [f.get(b"pk", b"").decode() for _, f in entries]
            raw_envelopes: list[bytes | None]
            raw_envelopes = rt.client.mget([keys.envelope(i) for i in ids])  # type: ignore[assignment]
            held = rt.dead_letters.held_patients(subscriber, patients)
            # Held by a dead letter of this very batch: its hold is still queued on `pipe`, so
            # the patient's next messages are parked on the same pipe, behind it, in order.
            newly_held: set[str] = set()
            handled: list[str] = []
            batch_delivered = 0
            pipe = rt.client.pipeline(transaction=True)
            for (entry_id, fields), envelope_id, patient, raw in zip(
                entries, ids, patients, raw_envelopes, strict=True
            ):
                if patient in newly_held:
                    pipe.xadd(
                        keys.parked(subscriber, patient),
                        {"env": envelope_id, "pk": patient, "partition": str(partition)},
                    )
                    handled.append(entry_id)
                    continue
                if patient in held and rt.dead_letters.park_if_held(
                    subscriber, patient, envelope_id, partition
                ):
                    handled.append(entry_id)
                    continue
                if raw is None:
                    rt.dead_letters.add(
                        pipe,
                        subscriber=subscriber,
                        envelope_id=envelope_id,
                        envelope_json=None,
                        partition=partition,
                        patient=patient,
                        entry_id=entry_id,
                        reason="the envelope expired before delivery",
                        attempts=[],
                        hold=False,
                    )
                    handled.append(entry_id)
                    continue
                outcome = _send(rt, adapter, entry_id, Envelope.model_validate_json(raw))
                if outcome.retry_after is not None:
                    delay = outcome.retry_after
                    rt.client.set(
                        keys.hold(subscriber, partition),
                        str(time.time() + delay),
                        ex=int(delay) + 60,
                    )
                    publish(rt.celery, DRAIN_OUTBOUND, [subscriber, partition], delay)
                    stopped = True
                    break
                if outcome.dead and b"dead" in fields:
                    # A replayed dead letter failed again: it stays that dead letter, reopened.
                    _reopen(rt, subscriber, fields[b"dead"].decode(), outcome)
                elif outcome.dead:
                    hold_patient = adapter.retry.on_exhausted == "hold"
                    rt.dead_letters.add(
                        pipe,
                        subscriber=subscriber,
                        envelope_id=envelope_id,
                        envelope_json=raw,
                        partition=partition,
                        patient=patient,
                        entry_id=entry_id,
                        reason=outcome.reason,
                        attempts=outcome.attempts,
                        hold=hold_patient,
                    )
                    log.error(
                        "delivery.dead_lettered",
                        envelope_id=envelope_id,
                        route=subscriber,
                        reason=outcome.reason,
                        held=hold_patient,
                    )
                    if hold_patient and patient:
                        newly_held.add(patient)
                else:
                    delivered += 1
                    batch_delivered += 1
                    if b"dead" in fields:
                        _resolve(rt, subscriber, fields[b"dead"].decode())
                handled.append(entry_id)
                lock.renew()
            if handled:
                pipe.xack(stream, keys.DELIVER_GROUP, *handled)
                pipe.hincrby(keys.STATS, f"delivered:{subscriber}", batch_delivered)
                pipe.hdel(keys.ATTEMPTS + subscriber, *handled)
            pipe.execute()
            log.info("delivery.batch", route=subscriber, partition=partition, handled=len(handled))
    if not stopped and has_work(rt.client, stream, keys.DELIVER_GROUP):
        rt.kicker.kick(DRAIN_OUTBOUND, [subscriber, partition], force=True)
    return delivered


def _reopen(rt: Runtime, subscriber: str, dead_id: str, outcome: _Outcome) -> None:
    """A replay of a dead letter failed: back to open, with the new attempts."""
    record = rt.dead_letters.get(subscriber, dead_id)
    if record is not None:
        record["status"] = "open"
        record["attempts"].extend(outcome.attempts)
        record["history"].append(
            {"action": "replay failed", "at": time.time(), "reason": outcome.reason}
        )
        rt.dead_letters.save(record)


def _resolve(rt: Runtime, subscriber: str, dead_id: str) -> None:
    """Mark a replayed dead letter delivered."""
    record = rt.dead_letters.get(subscriber, dead_id)
    if record is not None:
        record["status"] = "delivered"
        record["history"].append({"action": "delivered", "at": time.time()})
        rt.dead_letters.save(record)


def release_patient(subscriber: str, patient: str) -> int:
    """Deliver a held patient's parked messages in order, then lift the hold.

    The first parked message is the dead letter's (replayed, possibly corrected). Any failure
    stops the release: the failing message stays at the head and becomes (again) the open dead
    letter holding the patient. Returns how many were delivered.
    """
    rt = runtime()
    clear_contextvars()
    adapter = rt.adapters.get(subscriber)
    if adapter is None:
        log.error("delivery.unknown_subscriber", route=subscriber)
        return 0
    stream = keys.parked(subscriber, patient)
    delivered = 0
    with drainer_lock(rt.client, stream, rt.settings.claim_idle_s) as lock:
        if lock is None:
            return 0
        while True:
            entries: list[tuple[bytes, dict[bytes, bytes]]]
            entries = rt.client.xrange(stream, count=rt.settings.batch_size)  # type: ignore[assignment]
            if not entries:
                if rt.dead_letters.lift_if_empty(subscriber, patient):
                    log.info("delivery.released", route=subscriber, delivered=delivered)
                    return delivered
                continue
            for entry_id_raw, fields in entries:
                entry_id = entry_id_raw.decode()
                envelope_id = fields[b"env"].decode()
                raw: bytes | None = rt.client.get(keys.envelope(envelope_id))  # type: ignore[assignment]
                head_dead: bytes | None = rt.client.hget(keys.held(subscriber), patient)  # type: ignore[assignment]
                outcome = (
                    _send(rt, adapter, entry_id, Envelope.model_validate_json(raw))
                    if raw is not None
                    else _Outcome(dead=True, reason="the envelope expired before delivery")
                )
                if outcome.retry_after is not None:
                    publish(rt.celery, RELEASE_PATIENT, [subscriber, patient], outcome.retry_after)
                    return delivered
                if not outcome.delivered:
                    _fail_release(
                        rt,
                        subscriber,
                        patient,
                        head_dead,
                        entry_id,
                        envelope_id,
                        raw,
                        int(fields.get(b"partition", b"0")),
                        outcome,
                    )
                    return delivered
                pipe = rt.client.pipeline(transaction=True)
                pipe.xdel(stream, entry_id_raw)
                pipe.hdel(keys.ATTEMPTS + subscriber, entry_id)
                pipe.hincrby(keys.STATS, f"delivered:{subscriber}", 1)
                pipe.execute()
                if head_dead is not None:
                    record = rt.dead_letters.get(subscriber, head_dead.decode())
                    if record is not None and record["envelope_id"] == envelope_id:
                        _resolve(rt, subscriber, record["id"])
                delivered += 1
                lock.renew()


def _fail_release(
    rt: Runtime,
    subscriber: str,
    patient: str,
    head_dead: bytes | None,
    entry_id: str,
    envelope_id: str,
    raw: bytes | None,
    partition: int,
    outcome: _Outcome,
) -> None:
    """The message at the head of a release failed: it holds the patient (again)."""
    previous = rt.dead_letters.get(subscriber, head_dead.decode()) if head_dead else None
    if previous is not None and previous["envelope_id"] == envelope_id:
        _reopen(rt, subscriber, previous["id"], outcome)
        return
    pipe = rt.client.pipeline(transaction=True)
    dead_id = rt.dead_letters.add(
        pipe,
        subscriber=subscriber,
        envelope_id=envelope_id,
        envelope_json=raw,
        partition=partition,
        patient=patient,
        entry_id=entry_id,
        reason=outcome.reason or "delivery failed while releasing a held patient",
        attempts=outcome.attempts,
        hold=True,
        park=False,
    )
    pipe.execute()
    log.error(
        "delivery.dead_lettered",
        envelope_id=envelope_id,
        route=subscriber,
        dead_letter=dead_id,
        held=True,
    )
