"""Release a held patient: deliver their parked messages in order, then lift the hold.

After an operator replayed (as it was, or corrected) or discarded the dead letter holding a
patient for a subscriber, ``release_patient`` runs on ``pl:parked:SUB:PK``. The hold is lifted
(atomically) only once nothing is parked any more, so a message queued meanwhile is either parked
and delivered by this release or sent straight on, never stranded.

A plain function over Redis: the Celery task (``broker.worker.tasks``) and
``broker.testing.EagerBroker`` call it with the subscriber, its sender and a kicker.
"""

from __future__ import annotations

import time

import redis
from structlog.contextvars import clear_contextvars

from broker import keys, latency, trail
from broker.adapters.spec import AdapterSpec
from broker.delivery.attempt import Outcome, attempt
from broker.delivery.dead_letter import DeadLetterStore
from broker.delivery.send import Sender
from broker.dispatch import RELEASE_PATIENT, Kicker
from broker.envelope import Envelope
from broker.log import get_logger
from broker.policy import ConsentLookup
from broker.settings import Settings
from broker.streams import drainer_lock

__all__ = ["release_patient"]

log = get_logger(__name__)


def release_patient(
    client: redis.Redis,
    subscriber: AdapterSpec,
    patient: str,
    *,
    sender: Sender,
    kicker: Kicker,
    settings: Settings,
) -> int:
    """Deliver a held patient's parked messages in order, then lift the hold.

    The first parked message is the dead letter's (replayed, possibly corrected). Any failure
    stops the release: the failing message stays at the head and becomes (again) the open dead
    letter holding the patient; a retryable one is tried again after its back-off.

    Args:
        client: the broker's Redis.
        subscriber: the subscriber's registration.
        patient: the held patient's key (``Envelope.partition_key``).
        sender: the subscriber's sender.
        kicker: queues the release again after a retryable failure's back-off.
        settings: ``batch_size`` and ``claim_idle_s`` (the drainer lock).

    Returns:
        How many were delivered.
    """
    clear_contextvars()
    sub = subscriber.id
    dead_letters = DeadLetterStore(client)
    stream = keys.parked(sub, patient)
    delivered = 0
    with drainer_lock(client, stream, settings.claim_idle_s) as lock:
        if lock is None:
            return 0
        while True:
            entries: list[tuple[bytes, dict[bytes, bytes]]]
            entries = client.xrange(stream, count=settings.batch_size)
            if not entries:
                if dead_letters.lift_if_empty(sub, patient):
                    log.info("delivery.released", route=sub, delivered=delivered)
                    return delivered
                continue
            consents = ConsentLookup(client, settings.effective_store_url)
            for entry_id_raw, fields in entries:
                entry_id = entry_id_raw.decode()
                envelope_id = fields[b"env"].decode()
                raw: bytes | None = client.get(keys.envelope(envelope_id))
                head_dead: bytes | None = client.hget(keys.held(sub), patient)
                envelope = Envelope.unsealed(raw, envelope_id) if raw is not None else None
                outcome = (
                    attempt(
                        client,
                        subscriber,
                        sender,
                        keys.attempt_entry(stream, entry_id),
                        envelope,
                        consents=consents,
                    )
                    if envelope is not None
                    else Outcome(dead=True, reason="the envelope expired before delivery")
                )
                records: trail.Records = []
                passed = outcome.delivered or outcome.filtered
                if raw is not None and not passed:
                    outcome.record(records, sub, envelope_id)
                    trail.flush(client, records)
                if outcome.retry_after is not None:
                    kicker.later(RELEASE_PATIENT, [sub, patient], outcome.retry_after)
                    return delivered
                if not passed:
                    _fail_release(
                        dead_letters,
                        sub,
                        patient,
                        head_dead,
                        entry_id,
                        envelope_id,
                        raw,
                        int(fields.get(b"partition", b"0")),
                        outcome,
                    )
                    return delivered
                pipe = client.pipeline(transaction=True)
                pipe.xdel(stream, entry_id_raw)
                pipe.hdel(keys.ATTEMPTS + sub, keys.attempt_entry(stream, entry_id), entry_id)
                if outcome.delivered:
                    pipe.hincrby(keys.STATS, f"delivered:{sub}", 1)
                outcome.record(records, sub, envelope_id)
                trail.flush(pipe, records)
                if envelope is not None and outcome.delivered:
                    latency.observe(pipe, sub, [time.time() - envelope.received_at.timestamp()])
                pipe.execute()
                if head_dead is not None:
                    record = dead_letters.get(sub, head_dead.decode())
                    if record is not None and record["envelope_id"] == envelope_id:
                        dead_letters.resolve(sub, record["id"])
                delivered += int(outcome.delivered)
                lock.renew()


def _fail_release(
    dead_letters: DeadLetterStore,
    subscriber: str,
    patient: str,
    head_dead: bytes | None,
    entry_id: str,
    envelope_id: str,
    raw: bytes | None,
    partition: int,
    outcome: Outcome,
) -> None:
    """The message at the head of a release failed: it holds the patient (again)."""
    previous = dead_letters.get(subscriber, head_dead.decode()) if head_dead else None
    if previous is not None and previous["envelope_id"] == envelope_id:
        dead_letters.reopen(subscriber, previous["id"], outcome.attempts, outcome.reason)
        return
    pipe = dead_letters.client.pipeline(transaction=True)
    dead_id = dead_letters.add(
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
