"""Retention in Redis: dead letters, rejected input and quarantine forgotten by age, per kind.

The journal, the delivery queues and the envelopes leave with ``housekeeping.trim`` and their
TTL (``retention_s``); dedupe records expire with their window (``dedupe_window_s``). This
module purges what used to be kept forever:

- ``pl:rejected`` and ``pl:quarantine`` entries older than ``retention_rejected_s`` and
  ``retention_quarantine_s`` (``XTRIM MINID``: by arrival). A rejected entry the store's writer
  has not read yet is never cut (it would be lost from the store too).
- dead letters resolved (delivered or discarded) longer ago than ``retention_dead_letters_s``:
  their record (``pl:dl:SUB``) and history entries (``pl:dead:SUB``). An open dead letter, or
  one being replayed, is kept however old: it still holds a patient's messages, and an
  operator must decide.

Each batch is one pipeline of at most ``batch`` records; beat runs it with the trim.
"""

from __future__ import annotations

import json
import time

import redis

from broker import keys
from broker.settings import Settings
from broker.streams import undone_floor

__all__ = ["purge_redis"]

_OPEN = ("open", "replaying")


def _minid(now: float, age_s: int) -> tuple[int, int]:
    return int((now - age_s) * 1000), 0


def _trim(client: redis.Redis, stream: str, cut: tuple[int, int]) -> int:
    before = int(client.xlen(stream))
    if before:
        client.xtrim(stream, minid=f"{cut[0]}-{cut[1]}", approximate=False)
    return before - int(client.xlen(stream))


def _has_group(client: redis.Redis, stream: str, group: str) -> bool:
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return False  # no such stream
    return any(g["name"] in (group, group.encode()) for g in groups)


def purge_redis(
    client: redis.Redis, settings: Settings, *, now: float | None = None, batch: int = 1000
) -> dict[str, int]:
    """Delete the rejected input, quarantine entries and resolved dead letters past their age.

    Args:
        client: the broker's Redis.
        settings: ``retention_rejected_s``, ``retention_quarantine_s``,
            ``retention_dead_letters_s``.
        now: the present (epoch seconds); the clock by default.
        batch: dead-letter records deleted per round trip.

    Returns:
        How many of each kind went.
    """
    now = time.time() if now is None else now
    rejected_cut = _minid(now, settings.retention_rejected_s)
    if _has_group(client, keys.REJECTED, keys.STORE_GROUP):
        floor = undone_floor(client, keys.REJECTED, keys.STORE_GROUP)
        if floor is not None:
            rejected_cut = min(rejected_cut, floor)  # the writer has not stored these yet
    purged = {
        "rejected": _trim(client, keys.REJECTED, rejected_cut),
        "quarantine": _trim(client, keys.QUARANTINE, _minid(now, settings.retention_quarantine_s)),
        "dead_letters": 0,
    }
    cutoff = now - settings.retention_dead_letters_s
    prefix = keys.dead_records("")
    for name in client.scan_iter(match=f"{prefix}*", count=batch):
        subscriber = name.decode().removeprefix(prefix)
        old: list[bytes] = []
        history_cut = _minid(now, settings.retention_dead_letters_s)
        for dead_id, stored in client.hscan_iter(name, count=batch):
            record = json.loads(stored)
            if record.get("status") in _OPEN:
                # Its history entry stays, too: the cut stops before the oldest open one.
                opened = _minid(float(record.get("dead_lettered_at") or 0), 0)
                history_cut = min(history_cut, opened)
                continue
            resolved_at = max(
                [float(record.get("dead_lettered_at") or 0)]
                + [float(h.get("at") or 0) for h in record.get("history") or []]
            )
            if resolved_at < cutoff:
                old.append(dead_id)
        for start in range(0, len(old), batch):
            chunk = old[start : start + batch]
            pipe = client.pipeline(transaction=True)
            pipe.hdel(name, *chunk)
            pipe.srem(keys.dead_open(subscriber), *chunk)
            pipe.execute()
        purged["dead_letters"] += len(old)
        _trim(client, keys.dead(subscriber), history_cut)
    return purged
