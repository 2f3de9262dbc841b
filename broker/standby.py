"""Standby: a worker that finished a journal drain waits a little for the next message.

At light load every message found the journal idle, so the listener queued a Celery task for it:
the publish from a thread (~1 ms of the listener's CPU, before the ACK), the hop through Redis
and Celery's main process (~2 ms) and the task's own set-up, for a drain of one message
(docs/performance.md, "Steady load"). Instead, a drain task that is done stays in its pool
process for up to ``standby_s``, registered in ``pl:standby``, blocked on ``pl:wake``; the
journal append (one Lua call, ``broker.intake.journal``) that sets a partition's kick flag fresh
hands the partition to such a waiter when one is free, and then queues no task. Under load
there is no free waiter and every kick goes through Celery as before.

Delivery drains are handed over the same way (:func:`hand`, called by
``broker.dispatch.Kicker.queue``): a journal drain that fed two subscribers' queues runs one
delivery drain itself and hands the other to a waiter, so the two sends run side by side instead
of one after the other, and the delivery drains a busy journal drain kicks while it reads on
go to waiting workers before Celery. ``pl:wake`` holds both kinds (:func:`wake_item`): a
journal partition as its number, a delivery drain as ``o:SUBSCRIBER:PARTITION``.

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
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.commands.core import Script

from broker import keys
from broker.dispatch import DRAIN_INBOUND, DRAIN_OUTBOUND, QUEUE, Kicker, publish
from broker.log import get_logger

__all__ = ["LAPSE_S", "SLICE_S", "hand", "stand_by", "sweep", "wake_item", "wake_task"]

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

# KEYS: pl:standby, pl:wake, pl:stats. ARGV: the wake item. Hand it to a waiter when live waiters
# outnumber what was handed to them already (the journal append's rule); 1 when handed.
_HAND = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
if redis.call('ZCOUNT', KEYS[1], now, '+inf') > redis.call('LLEN', KEYS[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'standby_delivery', 1)
  return 1
end
return 0
"""
_HAND_SCRIPT = Script(None, _HAND.encode())
"""Run by EVALSHA: the text goes to each Redis server once."""

# KEYS: pl:standby. ARGV: member. Leave before draining what was popped; returns how many live
# waiters remain (the drain's hand-over attempts are skipped when none does).
_TAKE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local time = redis.call('TIME')
return redis.call('ZCOUNT', KEYS[1], tonumber(time[1]) + tonumber(time[2]) / 1000000, '+inf')
"""
_TAKE_SCRIPT = Script(None, _TAKE.encode())

_taken = threading.local()
"""``others``: while this thread runs a drain popped in standby, how many other waiters were
live when it left ``pl:standby`` (``None`` otherwise). At light load the worker that drains is the only
one waiting, so :func:`hand` would fail for every message: one script call each for nothing.
A waiter that enters after this was read is missed; the drain then runs in line, as it would
with none."""


def wake_item(task: str, args: list[Any]) -> str | None:
    """How ``pl:wake`` names the drain ``task(*args)``; ``None`` for a task standby cannot run."""
    if task == DRAIN_INBOUND:
        return str(int(args[0]))
    if task == DRAIN_OUTBOUND:
        return f"o:{args[0]}:{int(args[1])}"
    return None


def wake_task(item: bytes | str) -> tuple[str, list[Any]]:
    """The drain task a ``pl:wake`` item stands for (the inverse of :func:`wake_item`)."""
    text = item.decode() if isinstance(item, bytes) else item
    if text.startswith("o:"):
        _, subscriber, partition = text.split(":")
        return DRAIN_OUTBOUND, [subscriber, int(partition)]
    return DRAIN_INBOUND, [int(text)]


def hand(client: redis.Redis, task: str, args: list[Any]) -> bool:
    """Hand the drain ``task(*args)``, whose kick flag is set, to a waiting worker if one is free.

    Returns:
        True when a waiter will run it (no Celery task to queue); False when the caller must
        queue it as before.
    """
    others: int | None = getattr(_taken, "others", None)
    item = wake_item(task, args)
    if item is None or others == 0:
        return False
    handed = bool(
        _HAND_SCRIPT(keys=[keys.STANDBY, keys.WAKE, keys.STATS], args=[item], client=client)
    )
    if others is not None:
        _taken.others = others - 1 if handed else 0
    return handed


def stand_by(
    client: redis.Redis,
    *,
    run: Callable[[str, list[Any]], object],
    kicker: Kicker,
    budget_s: float,
    most_waiters: int,
) -> int:
    """Wait up to ``budget_s`` for drains handed over (:func:`wake_task`); run each.

    Args:
        client: the broker's Redis.
        run: runs one drain ``run(task, args)`` as its Celery task would: a journal partition
            (and the deliveries it fed), or one subscriber partition's delivery drain.
        kicker: queues the drain tasks this waiter leaves behind.
        budget_s: how long to stay, drains included; 0 or less: return at once.
        most_waiters: how many processes may wait at once (keep one for Celery's tasks).

    Returns:
        How many drains were run here.
    """
    if budget_s <= 0 or most_waiters <= 0:
        return 0
    member = f"{socket.gethostname()}:{os.getpid()}"
    if threading.current_thread() is not threading.main_thread():  # a pool process has one
        member += f":{threading.get_ident()}"
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
            _taken.others = int(_TAKE_SCRIPT(keys=[keys.STANDBY], args=[member], client=client))
            try:
                run(*wake_task(popped[1]))
            finally:
                _taken.others = None
            drained += 1
    finally:
        _requeue(kicker, leave(keys=[keys.STANDBY, keys.WAKE], args=[member]))
    return drained


def sweep(client: redis.Redis, kicker: Kicker) -> int:
    """Queue the drain tasks in ``pl:wake`` that no live waiter will take.

    The periodic re-kick runs it: a worker killed while waiting leaves its hand-overs behind.
    """
    leave = client.register_script(_LEAVE)
    return _requeue(kicker, leave(keys=[keys.STANDBY, keys.WAKE], args=[""]))


def _requeue(kicker: Kicker, items: list[bytes] | None) -> int:
    """Queue a Celery task for each drain left in ``pl:wake`` (its kick flag is set)."""
    for item in items or []:
        publish(kicker.celery, *wake_task(item))
    if items:
        log.info("standby.requeued", drains=len(items))
    return len(items or [])
