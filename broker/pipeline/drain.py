"""The journal drain: one journal partition → parse, map, route → the subscribers' queues.

A plain function over Redis: the Celery task (``broker.worker.tasks``) and
``broker.testing.EagerBroker`` call it with the configuration it maps with and a kicker.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from structlog.contextvars import clear_contextvars

from broker import keys, sealing, timing, trail
from broker.ack import build_ack, should_acknowledge
from broker.adapters.spec import AdapterSpec
from broker.dispatch import DRAIN_APP_ACKS, DRAIN_INBOUND, DRAIN_OUTBOUND, Kicker
from broker.envelope import Envelope, MessageState
from broker.errors import MessageError, SealedDataError
from broker.log import get_logger
from broker.mapping import MappingSet
from broker.parsing.hl7v2 import decode, parse
from broker.pipeline import dropped_tally, envelope_from_journal, process
from broker.settings import Settings
from broker.streams import DONE, HANDOVER, MORE, drainer_lock, read_batch

__all__ = ["drain_inbound"]

log = get_logger(__name__)
_Kick = tuple[str, list[Any]]


def drain_inbound(
    client: redis.Redis,
    partition: int,
    *,
    mappings: Callable[[], MappingSet],
    adapters: Mapping[str, AdapterSpec],
    subscribers: Sequence[AdapterSpec],
    kicker: Kicker,
    settings: Settings,
    defer: list[str] | None = None,
    stored: dict[str, tuple[bytes, Envelope]] | None = None,
) -> int:
    """Map every journalled message of one partition in order; queue them for subscribers.

    Each batch commits atomically (MULTI): envelopes stored, outbound entries appended and the
    journal entries acknowledged together, so a killed worker leaves either nothing or all of
    it, and the next drainer re-reads what was not acknowledged.

    The commit sets the kick flags of the queues it fed; the drains whose flag it set fresh are
    queued when it reads on or hands over on its time budget, so other workers deliver while it
    maps. Those of its last batch, when it ends with no work left, go to ``defer`` if given.

    Args:
        client: the broker's Redis.
        partition: which journal partition (``pl:in:P``).
        mappings: returns the mappings serving now (asked per message: they may be reloaded).
        adapters: every registration by id (a message's source: charset, time zone, ACK mode).
        subscribers: the enabled outbound adapters routing chooses from.
        kicker: queues the drains of the queues it fed, and its own when its time budget is
            spent with work left.
        settings: ``batch_size``, ``claim_idle_s``, ``drain_budget_s`` and ``retention_s``.
        defer: receives the subscribers whose delivery drain of this partition the last batch
            kicked fresh, when the drain ends with no work left, instead of queueing them. The
            caller then owns those kick flags and must run or queue each drain
            (``broker.worker.inline`` runs them in the same task).
        stored: receives the envelopes of the last batch queued for a subscriber, by id, each
            with the sealed bytes stored for it (``pl:env:ID``), so the delivery drains run in
            the same task need not open and parse them again (``drain_outbound``).

    Returns:
        How many journal entries were handled.
    """
    clear_contextvars()
    stream = keys.inbound(partition)
    done = 0
    ending = DONE
    fed: list[_Kick] = []  # the drains the last batch kicked fresh, not queued yet
    with (
        drainer_lock(
            client,
            stream,
            settings.claim_idle_s,
            group=keys.PIPELINE_GROUP,
            first_read=settings.batch_size,
        ) as lock,
        _queued_on_error(kicker, fed),
    ):
        if lock is None:
            return 0
        deadline = time.monotonic() + settings.drain_budget_s
        first = False  # the first batch came with the lock
        while True:
            _queue(kicker, fed)  # reading on: other workers deliver what it fed meanwhile
            entries = lock.take_first()
            if entries is None:
                entries = read_batch(
                    client,
                    stream,
                    keys.PIPELINE_GROUP,
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
            pipe = client.pipeline(transaction=True)
            if stored is not None:
                stored.clear()  # the delivery drains run in line read the last batch's only
            records: trail.Records = []
            touched: Counter[str] = Counter()
            acks: set[str] = set()
            unmapped: dict[str, Counter[str]] = {}
            counts: dict[str, int] = {}
            for entry_id, fields in entries:
                try:
                    received = envelope_from_journal(entry_id, fields, partition)
                    raw = sealing.open(fields[b"raw"], received.id, "raw")
                except (KeyError, ValueError, SealedDataError) as exc:
                    # Never a poison pill: an entry this code cannot read is set aside, not retried.
                    # (A key this worker lacks, DataKeyError, is its configuration's fault: the
                    # drain fails and the entry waits for a worker that has the key.)
                    reason = "the journal entry lacks id, source, received_at or raw"
                    if isinstance(exc, SealedDataError):
                        reason = str(exc)  # names the record and the failed check, never content
                    pipe.xadd(
                        keys.QUARANTINE, {"entry": entry_id, "stream": stream, "reason": reason}
                    )
                    log.error("message.unreadable_entry", stream=stream, entry=entry_id)
                    counts["failed"] = counts.get("failed", 0) + 1
                    continue
                started = timing.start(settings)
                envelope, destinations = process(received, raw, mappings(), adapters, subscribers)
                timing.mapped(pipe, settings, entry_id, envelope.id, started)
                if envelope.state is MessageState.FAILED:
                    pipe.hincrby(keys.adapter_stats(envelope.source), "failed", 1)
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
                trail.routed(records, envelope, destinations, subscribers)
                for destination in destinations:
                    entry: dict[str, str | int] = {
                        "env": envelope.id,
                        "pk": envelope.partition_key or "",
                        "partition": partition,
                    }
                    pipe.xadd(keys.outbound(destination.id, partition), entry)
                    touched[destination.id] += 1
                sealed = sealing.seal(envelope.model_dump_json().encode(), envelope.id, "env")
                pipe.set(keys.envelope(envelope.id), sealed, ex=settings.retention_s)
                if stored is not None and destinations:
                    stored[envelope.id] = (sealed, envelope)
                counts[envelope.state.value] = counts.get(envelope.state.value, 0) + 1
                if envelope.bundle is not None:
                    tally = unmapped.setdefault(envelope.source, Counter())
                    tally.update(envelope.unmapped)
                    tally["__messages__"] += 1
                if dropped := dropped_tally(envelope):
                    unmapped.setdefault(envelope.source, Counter()).update(dropped)
                if _application_ack(adapters, pipe, envelope, raw):
                    acks.add(envelope.source)
            trail.flush(pipe, records)
            pipe.xack(stream, keys.PIPELINE_GROUP, *[entry_id for entry_id, _ in entries])
            for state, count in counts.items():
                pipe.hincrby(keys.STATS, state, count)
            for subscriber, count in touched.items():
                pipe.hincrby(keys.STATS, f"queued:{subscriber}", count)
            for source, tally in unmapped.items():
                # One command per source, not one per field (a dozen at light load).
                flat = [item for pair in tally.items() for item in pair]
                pipe.eval(_HINCRBY_ALL, 1, keys.unmapped(source), *flat)
            kicks = [(DRAIN_OUTBOUND, [subscriber, partition]) for subscriber in sorted(touched)]
            kicks += [(DRAIN_APP_ACKS, [source]) for source in sorted(acks)]
            for task, args in kicks:
                kicker.flag(pipe, task, args)
            # A short batch: most likely nothing more. Finish looks, in the commit's MULTI
            # (atomically with releasing the lock and clearing the kick flag, so no arrival is
            # missed, and without a round trip of its own).
            short = len(entries) < settings.batch_size or time.monotonic() >= deadline
            if short:
                lock.finish_in(pipe, keep=time.monotonic() < deadline)
            replies = pipe.execute()
            done += len(entries)
            finished = replies.pop() if short else None
            replies = replies[len(replies) - len(kicks) :]
            fed.extend(kick for kick, fresh in zip(kicks, replies, strict=True) if fresh)
            if short:
                ending = lock.finished_with(finished)
                if ending != MORE:
                    break
            elif not lock.renew():
                break
    if ending == HANDOVER:
        kicker.queue(DRAIN_INBOUND, [partition])
    if defer is not None and ending == DONE:
        defer.extend(str(args[0]) for task, args in fed if task == DRAIN_OUTBOUND)
        fed[:] = [(task, args) for task, args in fed if task != DRAIN_OUTBOUND]
    _queue(kicker, fed)
    return done


_HINCRBY_ALL = "for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end"
"""HINCRBY of every (field, count) pair of ARGV in hash KEYS[1]."""


def _queue(kicker: Kicker, kicks: list[_Kick]) -> None:
    """Queue the drains whose kick flags the journal drain set fresh; empty ``kicks``."""
    while kicks:
        task, args = kicks[0]
        kicker.queue(task, args)
        kicks.pop(0)


@contextmanager
def _queued_on_error(kicker: Kicker, kicks: list[_Kick]) -> Iterator[None]:
    """On an error, still queue the drains in ``kicks``: their flags are set, nobody else will."""
    try:
        yield
    except BaseException:
        _queue(kicker, kicks)
        raise


def _application_ack(
    adapters: Mapping[str, AdapterSpec], pipe: Any, envelope: Envelope, raw: bytes
) -> bool:
    """Queue the enhanced-mode application ACK of a processed message, if MSH-16 wants one.

    AA when the message was mapped (routed or filtered), AE with the reason when it failed
    (HL7 v2.5.1 §2.9.3). Sent to the source adapter's ``reply_to`` by ``drain_app_acks``.
    """
    source = adapters.get(envelope.source)
    if source is None or source.ack_mode != "enhanced":
        return False
    try:
        message = parse(decode(raw, source.charset))
    except MessageError:
        return False  # the edge answered it already: it could not be read
    accepted = envelope.state is not MessageState.FAILED
    if not should_acknowledge(message.msh.value(16), accepted):
        return False
    code = "AA" if accepted else "AE"
    text = "" if accepted else (envelope.reason or "")
    ack = build_ack(code, message, text=text, error_code=None if accepted else "207")
    pipe.xadd(
        keys.app_acks(source.id),
        {"ack": ack.encode(source.charset, "replace"), "envelope": envelope.id},
    )
    return True
