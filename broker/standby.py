"""Standby: a worker that finished a journal drain waits a little for the next message.

At light load every message found the journal idle, so the listener queued a Celery task for it:
the publish from a thread (~1 ms of the listener's CPU, before the ACK), the hop through Redis
and Celery's main process (~2 ms) and the task's own set-up, for a drain of one message
(docs/performance.md, "Steady load"). Instead, a drain task that is done stays in its pool
process for up to ``standby_s``, registered in ``pl:standby``, blocked on ``pl:wake``; the
journal append (one Lua call, ``broker.intake.journal``) that sets a partition's kick flag fresh
hands the partition to such a waiter when one is free, and then queues no task. Under load
there is no free waiter and every kick goes through Celery as before.

The protocol keeps the kick-flag rule of ``broker.dispatch`` (a fresh flag means exactly one
drain is owed for the partition) and loses no hand-over:

- a waiter is live while its ``pl:standby`` score (an expiry, Redis time) is in the future; it
  renews it every :data:`SLICE_S`, and a killed worker's entry lapses within
  :data:`LAPSE_S`;
- the append hands a partition over (``RPUSH pl:wake``) only while live waiters outnumber the
  partitions already handed over;
- a waiter that pops a partition leaves ``pl:standby`` before it drains, and enters again after;
- a waiter that leaves takes, in the same script, the partitions that the remaining live waiters
  cannot cover (handed over to it between its pop and its leaving, or to a waiter that died) and
  queues their drain tasks;
- the periodic re-kick (``broker.ops.housekeeping``) queues a drain for any partition with work
  and no drainer, and :func:`sweep` returns to Celery what sits in ``pl:wake`` with no live
  waiter (a worker killed while waiting).

A waiter leaves early when Celery has tasks waiting (``LLEN`` of the queue, looked at every
:data:`SLICE_S`): standby must not keep the pool from a queued retry or delivery drain. At most
half the pool waits (``workers // 2``, at least one), so the other half takes Celery's tasks at
once.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import redis

from broker import keys
from broker.dispatch import DRAIN_INBOUND, QUEUE, Kicker
from broker.log import get_logger

__all__ = ["LAPSE_S", "SLICE_S", "stand_by", "sweep"]

log = get_logger(__name__)

SLICE_S = 0.1
"""How long one blocking wait lasts; between two, a waiter renews its entry and looks at Celery's
queue."""
LAPSE_S = 3 * SLICE_S
"""A waiter's entry lapses this long after its last renewal (a killed worker's, at the latest)."""

# KEYS: pl:standby, Celery's queue. ARGV: member, lapse, most waiters.
# Enter (or renew) unless Celery has work waiting or enough others already wait; drops lapsed
# entries. Returns 1 when the caller is a live waiter now.
_ENTER = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('LLEN', KEYS[2]) > 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""

# KEYS: pl:standby, pl:wake. ARGV: member (empty: none). Leave, then take the partitions the
# live waiters left cannot cover; returns them (their drains are owed: their flags are set).
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local live = redis.call('ZCOUNT', KEYS[1], now, '+inf')
local extra = redis.call('LLEN', KEYS[2]) - live
if extra <= 0 then
  return {}
end
return redis.call('LPOP', KEYS[2], extra)
"""


def stand_by(
    client: redis.Redis,
    *,
    drain: Callable[[int], object],
    kicker: Kicker,
    budget_s: float,
    most_waiters: int,
) -> int:
    """Wait up to ``budget_s`` for journal partitions handed over by the append; drain each.

    Args:
        client: the broker's Redis.
        drain: drains one journal partition (and delivers what it fed), as a drain task does.
        kicker: queues the drain tasks of the partitions this waiter leaves behind.
        budget_s: how long to stay, drains included; 0 or less: return at once.
        most_waiters: how many processes may wait at once (keep one for Celery's tasks).

    Returns:
        How many partitions were drained here.
    """
    if budget_s <= 0 or most_waiters <= 0:
        return 0
    member = f"{socket.gethostname()}:{os.getpid()}"
    enter = client.register_script(_ENTER)
    leave = client.register_script(_LEAVE)
    deadline = time.monotonic() + budget_s
    drained = 0
    try:
        while time.monotonic() < deadline:
            if not enter(keys=[keys.STANDBY, QUEUE], args=[member, LAPSE_S, most_waiters]):
                break
            popped = client.blpop([keys.WAKE], timeout=SLICE_S)
            if popped is None:
                continue
            client.zrem(keys.STANDBY, member)
            drain(int(popped[1]))
            drained += 1
    finally:
        _requeue(kicker, leave(keys=[keys.STANDBY, keys.WAKE], args=[member]))
    return drained


def sweep(client: redis.Redis, kicker: Kicker) -> int:
    """Queue the drain tasks of partitions in ``pl:wake`` that no live waiter will take.

    The periodic re-kick runs it: a worker killed while waiting leaves its hand-overs behind.
    """
    leave = client.register_script(_LEAVE)
    return _requeue(kicker, leave(keys=[keys.STANDBY, keys.WAKE], args=[""]))


def _requeue(kicker: Kicker, partitions: list[bytes] | None) -> int:
    """Queue a drain task for each partition left in ``pl:wake`` (its kick flag is set)."""
    for partition in partitions or []:
        kicker.queue(DRAIN_INBOUND, [int(partition)])
    if partitions:
        log.info("standby.requeued", partitions=len(partitions))
    return len(partitions or [])
