"""The delivery drain: one subscriber partition's queue, in order, with retries and holds.

The head of a partition waits out its retries: a retryable failure stops the partition, marks it
held until the next attempt (``pl:hold:SUB:P``) and schedules that attempt. A message refused for
good, or out of retries, becomes a dead letter; under ``on_exhausted: hold`` its patient's later
messages are parked behind it (``pl:parked:SUB:PK``) while the other patients of the partition go
on. ``broker.delivery.release`` delivers them once an operator replayed or discarded it.

A plain function over Redis: the Celery task (``broker.worker.tasks``) and
``broker.testing.EagerBroker`` call it with the subscriber, its sender and a kicker.
"""

from __future__ import annotations

import time

import redis
from structlog.contextvars import clear_contextvars

from broker import keys, latency, timing, trail
from broker.adapters.spec import AdapterSpec
from broker.delivery.attempt import attempt
from broker.delivery.dead_letter import DeadLetterStore
from broker.delivery.send import Sender
from broker.dispatch import DRAIN_OUTBOUND, Kicker
from broker.envelope import Envelope
from broker.errors import SealedDataError
from broker.log import get_logger
from broker.policy import ConsentLookup
from broker.settings import Settings
from broker.streams import DONE, HANDOVER, MORE, drainer_lock, read_batch

__all__ = ["HOLD_SLACK_S", "drain_outbound"]

log = get_logger(__name__)
HOLD_SLACK_S = 0.5
"""A retry's countdown and the hold mark come from different clocks: a little slack."""


def _envelopes_and_holds(
    client: redis.Redis, sub: str, ids: list[str], patients: list[str]
) -> tuple[list[bytes | None], set[str]]:
    """The batch's envelopes and which of its patients are held for ``sub``: one round trip."""
    wanted = [p for p in dict.fromkeys(patients) if p]
    reads = client.pipeline(transaction=False)
    reads.mget([keys.envelope(i) for i in ids])
    if wanted:
        reads.hmget(keys.held(sub), wanted)
    replies = reads.execute()
    found = replies[1] if wanted else []
    return replies[0], {p for p, dead in zip(wanted, found, strict=True) if dead is not None}


def _reuse(
    stored: dict[str, tuple[bytes, Envelope]] | None, envelope_id: str, raw: bytes
) -> Envelope | None:
    """The envelope ``stored`` holds for ``raw``, taken out of it; None if it holds none.

    Safe without opening ``raw``: the same bytes are the same sealed JSON, which this very
    envelope was dumped to (about 25 µs of AES-GCM and validation saved per message). Taken out,
    so one object serves one delivery only, as a parse of its own did: nothing a sender does to
    it can reach another subscriber's delivery.
    """
    if stored is None:
        return None
    found = stored.get(envelope_id)
    if found is None or found[0] != raw:
        return None
    del stored[envelope_id]
    return found[1]


def drain_outbound(
    client: redis.Redis,
    subscriber: AdapterSpec,
    partition: int,
    *,
    sender: Sender,
    kicker: Kicker,
    settings: Settings,
    stored: dict[str, tuple[bytes, Envelope]] | None = None,
) -> int:
    """Deliver one subscriber partition's queue in order; return how many were delivered.

    Args:
        client: the broker's Redis.
        subscriber: the subscriber's registration (its id, retry policy and ``on_exhausted``).
        partition: which of its queues (``pl:out:SUB:P``).
        sender: the subscriber's sender.
        kicker: queues the next drain (more work, or a retry after its back-off).
        settings: ``batch_size``, ``claim_idle_s`` (the drainer lock) and ``drain_budget_s``.
        stored: envelopes this process has just stored, by id, with their sealed bytes (filled
            by ``drain_inbound``). An entry whose stored bytes are exactly those takes its
            envelope from here, and out of it, instead of opening and parsing them again.
    """
    clear_contextvars()
    sub = subscriber.id
    stream = keys.outbound(sub, partition)
    dead_letters = DeadLetterStore(client)
    delivered = 0
    stopped = False
    ending = DONE
    with drainer_lock(
        client,
        stream,
        settings.claim_idle_s,
        group=keys.DELIVER_GROUP,
        first_read=settings.batch_size,
        # Waiting out a retry's back-off: the scheduled retry drains; arrivals kick again.
        hold=keys.hold(sub, partition),
        hold_slack_s=HOLD_SLACK_S,
        # The first batch's envelopes and held patients come with the lock, too.
        look_up=(keys.envelope(""), keys.held(sub)),
    ) as lock:
        if lock is None:
            return 0
        deadline = time.monotonic() + settings.drain_budget_s
        first = False  # the first batch came with the lock
        while not stopped:
            entries = lock.take_first()
            looked_up = lock.take_looked_up()  # the first batch's envelopes and holds, if read
            if entries is None:
                entries = read_batch(
                    client,
                    stream,
                    keys.DELIVER_GROUP,
                    settings.batch_size,
                    pending=first,
                )
            first = False
            if not entries:
                ending = lock.finish(keep=time.monotonic() < deadline)
                if ending == MORE:
                    first = True  # work left but nothing new: entries pending, read them
                    continue
                break
            ids = [f.get(b"env", b"").decode() for _, f in entries]
            patients = [f.get(b"pk", b"").decode() for _, f in entries]
            raw_envelopes, held = looked_up or _envelopes_and_holds(client, sub, ids, patients)
            # Held by a dead letter of this very batch: its hold is still queued on `pipe`, so
            # the patient's next messages are parked on the same pipe, behind it, in order.
            newly_held: set[str] = set()
            handled: list[str] = []
            batch_delivered = 0
            latencies: list[float] = []
            records: trail.Records = []
            # The consent registry's snapshot: one GET for the batch, on its first message.
            consents = ConsentLookup(client, settings.effective_store_url)
            pipe = client.pipeline(transaction=True)
            for (entry_id, fields), envelope_id, patient, raw in zip(
                entries, ids, patients, raw_envelopes, strict=True
            ):
                if patient in newly_held:
                    trail.flush(pipe, records)  # the records before this one stay before it
                    pipe.xadd(
                        keys.parked(sub, patient),
                        {"env": envelope_id, "pk": patient, "partition": str(partition)},
                    )
                    trail.state(pipe, sub, envelope_id, "parked", reason="behind a dead letter")
                    handled.append(entry_id)
                    continue
                if patient in held and dead_letters.park_if_held(
                    sub, patient, envelope_id, partition
                ):
                    handled.append(entry_id)
                    continue
                unreadable = "the envelope expired before delivery" if raw is None else None
                if raw is not None:
                    try:
                        envelope = _reuse(stored, envelope_id, raw) or Envelope.unsealed(
                            raw, envelope_id
                        )
                    except SealedDataError as exc:
                        # Altered: never sendable. (A key this worker lacks, DataKeyError, fails
                        # the drain instead: the entry waits for a worker that has the key.)
                        unreadable = str(exc)  # names the record and the failed check
                if unreadable is not None:
                    trail.flush(pipe, records)
                    dead_letters.add(
                        pipe,
                        subscriber=sub,
                        envelope_id=envelope_id,
                        envelope_json=raw,
                        partition=partition,
                        patient=patient,
                        entry_id=entry_id,
                        reason=unreadable,
                        attempts=[],
                        hold=False,
                    )
                    handled.append(entry_id)
                    continue
                started = timing.start(settings)
                entry = keys.attempt_entry(stream, entry_id)
                outcome = attempt(client, subscriber, sender, entry, envelope, consents=consents)
                timing.sent(pipe, settings, sub, entry_id, envelope_id, started)
                outcome.record(records, sub, envelope_id)
                if outcome.retry_after is not None:
                    delay = outcome.retry_after
                    client.set(
                        keys.hold(sub, partition),
                        str(time.time() + delay),
                        ex=int(delay) + 60,
                    )
                    kicker.later(DRAIN_OUTBOUND, [sub, partition], delay)
                    pipe.hincrby(keys.STATS, f"retried:{sub}", 1)
                    stopped = True
                    break
                if outcome.filtered:
                    if b"dead" in fields:
                        # A replayed dead letter the policy or a consent now refuses: closed.
                        dead_letters.resolve(sub, fields[b"dead"].decode())
                elif outcome.dead and b"dead" in fields:
                    # A replayed dead letter failed again: it stays that dead letter, reopened.
                    dead_letters.reopen(
                        sub, fields[b"dead"].decode(), outcome.attempts, outcome.reason
                    )
                elif outcome.dead:
                    hold_patient = subscriber.retry.on_exhausted == "hold"
                    trail.flush(pipe, records)  # the attempt before the dead letter's state
                    dead_letters.add(
                        pipe,
                        subscriber=sub,
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
                        route=sub,
                        reason=outcome.reason,
                        held=hold_patient,
                    )
                    if hold_patient and patient:
                        newly_held.add(patient)
                else:
                    delivered += 1
                    batch_delivered += 1
                    latencies.append(time.time() - envelope.received_at.timestamp())
                    if b"dead" in fields:
                        dead_letters.resolve(sub, fields[b"dead"].decode())
                handled.append(entry_id)
                lock.renew()
            trail.flush(pipe, records)
            if handled:
                pipe.xack(stream, keys.DELIVER_GROUP, *handled)
                pipe.hincrby(keys.STATS, f"delivered:{sub}", batch_delivered)
                # Also by the id alone, as attempts were kept before: one left by an upgrade
                # would count as a message retrying for ever (the subscriber_failing alert).
                attempts_of = [keys.attempt_entry(stream, e) for e in handled]
                pipe.hdel(keys.ATTEMPTS + sub, *attempts_of, *handled)
                latency.observe(pipe, sub, latencies)
            # A short batch: most likely nothing more. Finish looks, in the commit's MULTI
            # (atomically with releasing the lock and clearing the kick flag, so no arrival is
            # missed). Not after a stop: leaving the lock releases it and clears the flag.
            short = len(entries) < settings.batch_size or time.monotonic() >= deadline
            if short and not stopped:
                lock.finish_in(pipe, keep=time.monotonic() < deadline)
            replies = pipe.execute()
            log.info("delivery.batch", route=sub, partition=partition, handled=len(handled))
            if stopped:
                break
            if short:
                ending = lock.finished_with(replies[-1])
                if ending != MORE:
                    break
    if ending == HANDOVER:
        kicker.queue(DRAIN_OUTBOUND, [sub, partition])
    return delivered
