"""Re-encryption of what Redis keeps: envelopes and dead letters moved to the current data key.

``pl:env:ID`` values and the envelopes kept in dead-letter records (``pl:dl:SUB``) are sealed
again, a ``SCAN`` batch at a time; each write is a compare-and-set (Lua), so an envelope a
worker or an operator rewrote meanwhile is left as they wrote it (already on the current key).
Stream entries (the journal ``pl:in:P``, ``pl:rejected``) cannot be rewritten in place: Redis
streams are append-only. They are counted per key, and leave with the journal's trim (once
stored) or the retention; keep an old key until ``count_streams`` finds none left on it.
Resumable: a pass started again rewrites only what is still on an old key.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from broker import keys, sealing
from broker.errors import DataKeyError

__all__ = ["RedisProgress", "count_streams", "reencrypt_redis"]

_SET_IF_SAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""
_HSET_IF_SAME = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""


@dataclass
class RedisProgress:
    """What a Redis re-encryption pass did."""

    envelopes: int = 0
    """Envelopes sealed again."""
    dead_letters: int = 0
    """Dead-letter records whose envelope was sealed again."""
    streams: Counter[str] = field(default_factory=Counter)
    """Stream entries by the key their body is sealed with (``clear``: not sealed)."""


def _ring() -> sealing.KeyRing:
    ring = sealing.active()
    if ring is None:
        msg = "encryption is off (PASSERELLE_DATA_ENCRYPTION=off): there is no key to re-encrypt to"
        raise DataKeyError(msg)
    return ring


def reencrypt_redis(client: redis.Redis, *, batch: int = 500) -> RedisProgress:
    """Seal again with the current key every envelope and dead letter on another key (or clear).

    Raises:
        DataKeyError: encryption is off, or a body is sealed with a key the ring lacks.
        SealedDataError: a body fails authentication (named by its record and field).
    """
    ring = _ring()
    progress = RedisProgress()
    set_if_same = client.register_script(_SET_IF_SAME)
    hset_if_same = client.register_script(_HSET_IF_SAME)
    prefix = keys.envelope("")
    names: list[bytes] = []
    for name in client.scan_iter(match=f"{prefix}*", count=batch):
        names.append(name)
        if len(names) >= batch:
            progress.envelopes += _envelopes(client, set_if_same, ring, names, prefix)
            names = []
    progress.envelopes += _envelopes(client, set_if_same, ring, names, prefix)
    for name in client.scan_iter(match=f"{keys.dead_records('')}*", count=batch):
        for dead_id, stored in client.hgetall(name).items():
            resealed = _dead_letter(ring, stored)
            if resealed is not None and hset_if_same(keys=[name], args=[dead_id, stored, resealed]):
                progress.dead_letters += 1
    progress.streams = count_streams(client, batch=batch)
    return progress


def _envelopes(
    client: redis.Redis, script: Any, ring: sealing.KeyRing, names: list[bytes], prefix: str
) -> int:
    if not names:
        return 0
    done = 0
    values: list[bytes | None] = client.mget(names)
    for name, stored in zip(names, values, strict=True):
        if stored is None or sealing.key_id_of(stored) == ring.current:
            continue
        envelope_id = name.decode().removeprefix(prefix)
        body = sealing.open(stored, envelope_id, "env")
        done += int(script(keys=[name], args=[stored, ring.seal(body, envelope_id, "env")]))
    return done


def _dead_letter(ring: sealing.KeyRing, stored: bytes) -> bytes | None:
    """The record with its envelope sealed with the current key; ``None`` when it already is."""
    record = json.loads(stored)
    kept = record.get("envelope")
    envelope_id = str(record.get("envelope_id") or "")
    if kept is None or (isinstance(kept, str) and sealing.key_id_of(kept) == ring.current):
        return None
    if isinstance(kept, str):
        text = sealing.open_text(kept, envelope_id, "env")
    else:
        text = json.dumps(kept, separators=(",", ":"))
    record["envelope"] = sealing.as_text(ring.seal(text.encode(), envelope_id, "env"))
    return json.dumps(record).encode()


def count_streams(client: redis.Redis, *, batch: int = 500) -> Counter[str]:
    """Journal and rejected entries by the key their body is sealed with (``clear``: not sealed)."""
    counted: Counter[str] = Counter()
    streams = [name.decode() for name in client.scan_iter(match="pl:in:*", count=batch)]
    for stream in [*streams, keys.REJECTED]:
        cursor = "-"
        while True:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(
                stream, min=cursor, count=batch
            )
            for _, fields in entries:
                raw = fields.get(b"raw")
                if raw is not None:
                    counted[sealing.key_id_of(raw) or "clear"] += 1
            if len(entries) < batch:
                break
            last = entries[-1][0].decode()
            ms, _, seq = last.partition("-")
            cursor = f"{ms}-{int(seq) + 1}"
    return counted
