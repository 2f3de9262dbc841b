"""Consumer-group helpers: one drainer per stream, pending entries first, work detection."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from broker import keys

__all__ = ["CONSUMER", "Entry", "drainer_lock", "ensure_group", "has_work", "read_batch"]

CONSUMER = "drainer"
"""Every drainer of a stream uses this consumer name. Only one runs at a time (the lock), so
the group's pending list is exactly the work a killed drainer left: the next one reads it first
and no XCLAIM is needed."""

Entry = tuple[str, dict[bytes, bytes]]

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Lock:
    """A held drainer lock; ``renew()`` before its TTL runs out on long batches."""

    def __init__(self, client: redis.Redis, key: str, token: bytes, ttl_ms: int) -> None:
        self.client = client
        self.key = key
        self.token = token
        self.ttl_ms = ttl_ms
        self.renewed_at = time.monotonic()

    def renew(self) -> bool:
        """Extend the lock when a third of its TTL has passed; False if it was lost."""
        now = time.monotonic()
        if (now - self.renewed_at) * 1000 < self.ttl_ms / 3:
            return True
        self.renewed_at = now
        return bool(self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))


@contextmanager
def drainer_lock(client: redis.Redis, stream: str, ttl_s: float) -> Iterator[Lock | None]:
    """Hold the single-drainer lock of ``stream`` (yields None when another drainer has it).

    If a drainer dies, its lock expires after ``ttl_s``; its unacknowledged entries are then
    read first by the next drainer.
    """
    key = keys.lock(stream)
    token = os.urandom(8).hex().encode()
    ttl_ms = int(ttl_s * 1000)
    if not client.set(key, token, nx=True, px=ttl_ms):
        yield None
        return
    try:
        yield Lock(client, key, token, ttl_ms)
    finally:
        client.eval(_RELEASE, 1, key, token)


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) if missing; from the start of the stream."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_batch(
    client: redis.Redis,
    stream: str,
    group: str,
    count: int,
    *,
    pending: bool = True,
) -> list[Entry]:
    """Read up to ``count`` entries: first those delivered before but never acknowledged (a dead
    drainer's, or a retried head), in order, then new ones.

    Args:
        pending: look at unacknowledged entries first; a drainer needs it only on its first
            read (afterwards it has acknowledged all it read), which saves a round trip a batch.
    """
    for start in ("0", ">") if pending else (">",):
        try:
            reply: Any = client.xreadgroup(group, CONSUMER, {stream: start}, count=count)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            ensure_group(client, stream, group)
            reply = client.xreadgroup(group, CONSUMER, {stream: start}, count=count)
        entries = [(eid.decode(), fields) for eid, fields in reply[0][1] if fields] if reply else []
        if entries:
            return entries
    return []


def has_work(client: redis.Redis, stream: str, group: str) -> bool:
    """Tell whether the group has pending entries or entries not yet delivered to it.

    Works on Redis 6.2 (the embedded one), whose XINFO GROUPS has no ``lag``.
    """
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return False
    for info in groups:
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name != group:
            continue
        if info["pending"]:
            return True
        last = client.xrevrange(stream, count=1)
        if not last:
            return False
        delivered = info["last-delivered-id"]
        delivered_id = delivered.decode() if isinstance(delivered, bytes) else str(delivered)
        newest = last[0][0]
        newest_id = newest.decode() if isinstance(newest, bytes) else str(newest)
        return _id_tuple(newest_id) > _id_tuple(delivered_id)
    return client.xlen(stream) > 0


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
