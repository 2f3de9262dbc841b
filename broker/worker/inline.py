"""The journal drain, then the delivery drains it fed, in the same task.

At light load every message would cost three Celery tasks: the journal drain, then one delivery
drain per subscriber, each a hop through Redis and Celery's main process (about 4 ms of CPU per
message at 25–50 msg/s, docs/performance.md). When the journal drain ends with no work left,
the delivery drains its last batch kicked are its own (it set their kick flags fresh in its
commit: no task is queued and no drainer runs for them), so this runs them right away, in this
task, instead of queueing them. When it fed more than one subscriber, the others are handed
to workers in standby first (``broker.standby.hand``), so the sends run side by side: the
second subscriber no longer waits for the first one's receiver.

Bounded, so a busy pipeline is not slowed by slow receivers: nothing runs in line after a drain
that handed over on its time budget, or that handled more than :data:`INLINE_MAX_MESSAGES` (the
hop is amortised over the batch there, and other workers deliver in parallel); the drains run in
line share :data:`INLINE_BUDGET_S` (each reads at least one batch, then hands what is left to a
task of its own, as on its time budget), and whichever is not reached is queued as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import redis

from broker.adapters.spec import AdapterSpec
from broker.delivery import Sender, drain_outbound
from broker.dispatch import DRAIN_OUTBOUND, Kicker
from broker.envelope import Envelope
from broker.mapping import MappingSet
from broker.pipeline.drain import drain_inbound
from broker.settings import Settings

__all__ = ["INLINE_BUDGET_S", "INLINE_MAX_MESSAGES", "drain_and_deliver"]

INLINE_BUDGET_S = 0.05
"""The time the delivery drains run in line after a journal drain may take together."""
INLINE_MAX_MESSAGES = 16
"""A journal drain that handled more messages than this queues its delivery drains as tasks."""


def drain_and_deliver(
    client: redis.Redis,
    partition: int,
    *,
    mappings: Callable[[], MappingSet],
    adapters: Mapping[str, AdapterSpec],
    subscribers: Sequence[AdapterSpec],
    kicker: Kicker,
    settings: Settings,
    sender: Callable[[str], Sender],
) -> int:
    """Drain journal partition ``partition``, then deliver what it fed, within the bounds above.

    Args:
        client, partition, mappings, adapters, subscribers, kicker, settings: as
            ``broker.pipeline.drain.drain_inbound``; the delivery drains use the same kicker
            (more work, a retry's back-off) and settings (their time budget cut to what is left).
        sender: a subscriber's sender, by subscriber id.

    Returns:
        How many journal entries were handled.
    """
    fed: list[str] = []
    stored: dict[str, tuple[bytes, Envelope]] = {}  # the last batch's: read again by the drains
    done = drain_inbound(
        client,
        partition,
        mappings=mappings,
        adapters=adapters,
        subscribers=subscribers,
        kicker=kicker,
        settings=settings,
        defer=fed,
        stored=stored,
    )
    if kicker.hand is not None and done <= INLINE_MAX_MESSAGES:
        fed[1:] = [s for s in fed[1:] if not kicker.hand(client, DRAIN_OUTBOUND, [s, partition])]
    deadline = time.monotonic() + INLINE_BUDGET_S
    try:
        while fed and done <= INLINE_MAX_MESSAGES:
            left = min(deadline - time.monotonic(), settings.drain_budget_s)
            spec = adapters.get(fed[0])
            if left <= 0 or spec is None:
                break
            subscriber_sender = sender(spec.id)
            fed.pop(0)
            drain_outbound(
                client,
                spec,
                partition,
                sender=subscriber_sender,
                kicker=kicker,
                settings=settings.model_copy(update={"drain_budget_s": left}),
                stored=stored,
            )
    finally:
        for subscriber in fed:  # their flags are set: each gets its task
            kicker.queue(DRAIN_OUTBOUND, [subscriber, partition])
    return done
