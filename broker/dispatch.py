"""Kicks: ask the Celery pool to drain a stream, at most one queued or running drain per stream.

Tasks carry stream coordinates, never patient data. A ``pl:kick:STREAM`` flag (set with NX)
keeps a stream of messages from queueing one task each: it is set by the kick that queues a
task and kept set by the drainer while it runs (``broker.streams.drainer_lock``), which reads
everything that arrives meanwhile and clears the flag only when it finds no work left, in the
same atomic script. So arrivals queue a task only when no drain is queued or running
(ARCHITECTURE §2: a Celery hop costs ~1.5 ms of CPU; the pool could not afford one per message).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from broker import keys
from broker.log import get_logger

__all__ = [
    "DRAIN_APP_ACKS",
    "DRAIN_INBOUND",
    "DRAIN_OUTBOUND",
    "KICK_FLAG_TTL_S",
    "REKICK",
    "RELEASE_PATIENT",
    "AsyncKicker",
    "Kicker",
    "publish",
    "stream_of",
]

DRAIN_INBOUND = "passerelle.drain_inbound"
DRAIN_OUTBOUND = "passerelle.drain_outbound"
REKICK = "passerelle.rekick"
RELEASE_PATIENT = "passerelle.release_patient"
DRAIN_APP_ACKS = "passerelle.drain_app_acks"
QUEUE = "passerelle"
log = get_logger(__name__)
KICK_FLAG_TTL_S = 60
"""A kick flag outlives a lost task by this long at most; the periodic re-kick covers the gap."""


def stream_of(task: str, args: list[Any]) -> str:
    """The stream a drain task works on."""
    if task == DRAIN_INBOUND:
        return keys.inbound(int(args[0]))
    if task == DRAIN_APP_ACKS:
        return keys.app_acks(str(args[0]))
    return keys.outbound(str(args[0]), int(args[1]))


def publish(celery: Any, task: str, args: list[Any], countdown: float | None = None) -> None:
    """Queue one Celery task; after a broken connection, once more on a fresh one.

    After a Redis restart kombu's pooled producers can stay broken (seen in the Redis-restart
    fault test: every publish from a pool process failed), and since drains are only queued by
    kicks, nothing would ever drain again. So the pool is reset and the publish retried.
    """
    try:
        celery.send_task(task, args=args, queue=QUEUE, countdown=countdown)
    except Exception as exc:
        log.warning("dispatch.republish", task=task, error=type(exc).__name__)
        celery.pool.force_close_all()
        with celery.connection_for_write() as connection:
            celery.send_task(
                task, args=args, queue=QUEUE, countdown=countdown, connection=connection
            )


Hand = Callable[[redis.Redis, str, list[Any]], bool]
"""Gives a drain whose kick flag is set to a worker in standby; False when none is free."""


class Kicker:
    """Synchronous kicks, used inside Celery tasks.

    Args:
        celery: the Celery app tasks are published with.
        client: the broker's Redis.
        hand: tried before publishing a drain whose flag is set (``broker.standby.hand``: a
            waiting worker runs it, no Celery hop); ``None``: always publish.
    """

    def __init__(self, celery: Any, client: redis.Redis, hand: Hand | None = None) -> None:
        self.celery = celery
        self.client = client
        self.hand = hand

    def kick(
        self, task: str, args: list[Any], *, force: bool = False, countdown: float = 0
    ) -> bool:
        """Queue ``task(*args)`` unless a kick for its stream is already queued (or ``force``)."""
        flag = keys.kick(stream_of(task, args))
        fresh = self.client.set(flag, b"1", nx=True, ex=KICK_FLAG_TTL_S)
        if not (fresh or force):
            return False
        publish(self.celery, task, args, countdown or None)
        return True

    def flag(self, pipe: Any, task: str, args: list[Any]) -> None:
        """Add the kick flag's SET NX to ``pipe`` (a MULTI that also queued the work).

        Setting it atomically with the work lets a running drainer's finish see either the work
        or the flag cleared; :meth:`queue` the task when the pipe's reply for it is true.
        """
        pipe.set(keys.kick(stream_of(task, args)), b"1", nx=True, ex=KICK_FLAG_TTL_S)

    def queue(self, task: str, args: list[Any]) -> None:
        """Queue ``task(*args)`` whose kick flag is already set (by :meth:`flag`, or a drainer
        handing over when its time budget is spent): to a worker in standby if one is free,
        otherwise to Celery."""
        if self.hand is not None and self.hand(self.client, task, args):
            return
        publish(self.celery, task, args)

    def later(self, task: str, args: list[Any], delay: float) -> None:
        """Queue ``task(*args)`` to run in ``delay`` seconds, whatever kick flag is set.

        A retry's back-off: the drain that asks for it stops, so no other drain would run it.
        """
        publish(self.celery, task, args, delay)


class AsyncKicker:
    """Kicks from an asyncio process (the listeners): the Celery publish runs in a thread."""

    def __init__(self, celery: Any, client: redis.asyncio.Redis) -> None:
        self.celery = celery
        self.client = client
        self._pending: set[asyncio.Task[None]] = set()

    async def kick(self, task: str, args: list[Any]) -> bool:
        """Queue ``task(*args)`` unless a kick for its stream is already queued."""
        flag = keys.kick(stream_of(task, args))
        if not await self.client.set(flag, b"1", nx=True, ex=KICK_FLAG_TTL_S):
            return False
        await self.dispatch(task, args)
        return True

    async def dispatch(self, task: str, args: list[Any]) -> None:
        """Queue ``task(*args)`` whose kick flag the caller already set (the journal's Lua does)."""
        await asyncio.to_thread(publish, self.celery, task, args)

    def dispatch_soon(self, task: str, args: list[Any]) -> None:
        """:meth:`dispatch` without waiting for it: the sender's answer goes out meanwhile.

        The message is journalled and its stream's kick flag set before this is called, so the
        publish (a thread, Celery's message, a round trip to Redis: ~1 ms, which every ACK that
        kicked used to wait for) owes the sender nothing. One that fails is logged
        (``inbound.kick_failed``) and the periodic re-kick queues the drain within its period,
        as when the publish failed before the answer; so does a listener killed meanwhile.
        """
        pending = asyncio.get_running_loop().create_task(self._dispatch_logged(task, args))
        self._pending.add(pending)  # the loop keeps only a weak reference to a task
        pending.add_done_callback(self._pending.discard)

    async def _dispatch_logged(self, task: str, args: list[Any]) -> None:
        try:
            await self.dispatch(task, args)
        except Exception as exc:
            log.warning(
                "inbound.kick_failed", stream=stream_of(task, args), error=type(exc).__name__
            )

    async def settle(self, timeout_s: float = 10.0) -> None:
        """Wait up to ``timeout_s`` for the publishes :meth:`dispatch_soon` started (a listener
        that stops); the periodic re-kick drains what one still running leaves behind."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)
