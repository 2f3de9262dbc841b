"""The journal: raw inbound messages appended to Redis Streams before anything is acknowledged."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from broker import keys, sealing
from broker.dispatch import KICK_FLAG_TTL_S
from broker.envelope import new_id
from broker.errors import JournalError

__all__ = [
    "DEDUPE_BUCKETS_PER_WINDOW",
    "DEDUPE_SHARD_DIGITS",
    "REJECTED_HEAD_BYTES",
    "AppendResult",
    "Journal",
    "content_digest",
    "dedupe_bucket_s",
    "dedupe_digest",
    "dedupe_slot",
    "rejected_raw",
]

REJECTED_HEAD_BYTES = 64 * 1024
"""Of an over-size message, only this many first bytes are kept in ``pl:rejected`` (with the
whole payload's size and SHA-256): enough to read its header, not 10 MiB kept forever."""

DEDUPE_BUCKETS_PER_WINDOW = 4
"""A dedupe window is cut into this many time buckets; a lookup reads the 4 or 5 that overlap it."""

DEDUPE_SHARD_DIGITS = 4
"""Hex digits naming a record's shard: 65,536 hashes per bucket. At 100 msg/s (all adapters) a
6 h bucket holds ~33 records per hash, at ~1,500 msg/s 512: Redis's default
``hash-max-listpack-entries`` (``hash-max-ziplist-entries`` in 6.2), up to which a hash keeps
the compact encoding (~38 B a message; docs/performance.md)."""

# One round trip, atomically: backpressure (KEYS[5]) refuses first. Then, when dedupe is on
# (a shard in ARGV[4]), the message's record (field ARGV[5]) is looked for in each time bucket
# that overlaps the window, newest first: hash ARGV[3]..BUCKET..':'..ARGV[4] (``keys.dedupe``;
# built here from Redis's clock, so every listener agrees on the buckets), then in the string key
# the version before kept per message (KEYS[2], ``keys.legacy_dedupe``). A duplicate returns the
# original envelope id (0) or that version's stored reply (3). Otherwise the raw message is
# appended to its partition stream, its record (the packed envelope id ARGV[6]) is added to the
# current bucket, which expires when its newest possible record leaves the window, and the
# partition's kick flag is set. When the flag is fresh (no drain queued or running), the
# partition goes to a worker waiting in standby if one is free (``broker.standby``: live
# waiters in KEYS[6] outnumber the partitions already handed to them in KEYS[7]); the third
# result says 0: a drain is under way, 1: queue a drain task, 2: a waiting worker drains it.
# KEYS[8] counts the adapter's messages and their last time.
_APPEND = """
local pressure = redis.call('GET', KEYS[5])
if pressure then
  return {2, pressure}
end
local time = redis.call('TIME')
local record, expire_at
if ARGV[4] ~= '' then
  local window = tonumber(ARGV[1])
  local bucket_s = tonumber(ARGV[2])
  local newest = math.floor(tonumber(time[1]) / bucket_s)
  for bucket = newest, math.floor((tonumber(time[1]) - window) / bucket_s), -1 do
    local original = redis.call('HGET', ARGV[3] .. bucket .. ':' .. ARGV[4], ARGV[5])
    if original then
      redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
      return {0, original}
    end
  end
  local legacy = redis.call('GET', KEYS[2])
  if legacy then
    redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
    return {3, legacy}
  end
  record = ARGV[3] .. newest .. ':' .. ARGV[4]
  expire_at = (newest + 1) * bucket_s + window
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 9))
redis.call('HINCRBY', KEYS[8], 'received', 1)
redis.call('HSET', KEYS[8], 'last_ms', string.match(id, '^%d+'))
if record then
  redis.call('HSET', record, ARGV[5], ARGV[6])
  redis.call('EXPIREAT', record, expire_at)
end
redis.call('HINCRBY', KEYS[3], 'received', 1)
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[7]) then
  return {1, id, 0}
end
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
if redis.call('ZCOUNT', KEYS[6], now, '+inf') > redis.call('LLEN', KEYS[7]) then
  redis.call('RPUSH', KEYS[7], ARGV[8])
  redis.call('HINCRBY', KEYS[3], 'standby', 1)
  return {1, id, 2}
end
return {1, id, 1}
"""


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What the journal did with a message."""

    entry_id: str | None
    """The stream entry id; ``None`` for a duplicate."""
    duplicate_of: str | None = None
    """For a duplicate, the envelope id of the message it repeats (``None`` when only the
    previous version's record knew it: then ``legacy_reply`` is set)."""
    legacy_reply: bytes | None = None
    """For a duplicate of a message received before the upgrade to bucketed records, the reply
    that version stored (an ACK, an OperationOutcome). Gone one dedupe window after upgrade."""
    kick: bool = False
    """True when no drain task was queued for the partition yet: the caller must queue one."""
    handed: bool = False
    """True when a worker waiting in standby takes the partition (no task to queue)."""

    @property
    def duplicate(self) -> bool:
        """True when the message was a resend and nothing was journalled."""
        return self.entry_id is None


def dedupe_bucket_s(window_s: int) -> int:
    """The length of one dedupe time bucket for a window of ``window_s`` seconds (at least 1 s).

    A record is found for at least the window and at most one bucket longer: its bucket expires
    when the newest record it could hold leaves the window.
    """
    return max(1, window_s // DEDUPE_BUCKETS_PER_WINDOW)


def dedupe_slot(
    source: str, digest: str, shard_digits: int = DEDUPE_SHARD_DIGITS
) -> tuple[str, bytes]:
    """The shard and the field of a message's dedupe record.

    Both come from the SHA-256 of the receiving adapter and the message's identity: the shard is
    its first ``shard_digits`` hex digits, the field the 16 bytes after its first two (128 bits,
    never fewer: two distinct messages sharing a field would make one a duplicate and drop it).
    The adapter is hashed in rather than named in the key, so every adapter shares the buckets'
    hashes and a quiet adapter costs no more per message than a busy one.
    """
    hashed = hashlib.sha256(f"{source}\x1f{digest}".encode()).digest()
    return hashed.hex()[:shard_digits], hashed[2:18]


def _pack_id(envelope_id: str) -> bytes:
    """An envelope id as stored in a dedupe record: ``new_id``'s hex as 14 raw bytes.

    Anything else (and hex whose first byte is 0) is kept as text behind a zero byte, so
    ``_unpack_id`` can always tell the two apart: ``new_id`` starts with a millisecond clock
    whose top byte has not been 0 since 2004.
    """
    try:
        packed = bytes.fromhex(envelope_id)
    except ValueError:
        packed = b""
    if packed and packed[0] and packed.hex() == envelope_id:
        return packed
    return b"\x00" + envelope_id.encode()


def _unpack_id(value: bytes) -> str:
    """The envelope id a dedupe record holds (``_pack_id``)."""
    if value[:1] == b"\x00":
        return value[1:].decode()
    return value.hex()


def rejected_raw(fields: dict[bytes, bytes]) -> bytes:
    """The bytes a ``pl:rejected`` entry keeps, opened (``Journal.reject`` sealed them).

    Raises:
        DataKeyError: sealed with a key this process lacks.
        SealedDataError: altered, or copied from another entry.
    """
    raw = fields.get(b"raw") or b""
    record = (fields.get(b"id") or b"").decode()
    return sealing.open(raw, record, "raw")


def _refusal(exc: Exception) -> str:
    """The AR text for a journal append Redis refused or could not take."""
    # Under `noeviction` a full Redis refuses writes: "OOM command not allowed when used memory
    # > 'maxmemory'" (redis-py drops the OOM prefix; inside a script it is the script's error).
    if isinstance(exc, redis.ResponseError) and "maxmemory" in str(exc):
        return (
            "the journal is out of memory (Redis reached its maxmemory limit); "
            "nothing was kept, resend later"
        )
    return f"the journal could not accept the message ({type(exc).__name__}); resend later"


def dedupe_digest(sending_application: str, sending_facility: str, control_id: str) -> str:
    """The dedupe identity of an HL7 v2 message: MSH-3, MSH-4 and MSH-10 (never patient data).

    The journal adds the receiving adapter (``keys.dedupe``): the same three values from two
    adapters are two messages.
    """
    joined = "\x1f".join((sending_application, sending_facility, control_id))
    return hashlib.sha1(joined.encode("utf-8"), usedforsecurity=False).hexdigest()


def content_digest(document: object) -> str:
    """The dedupe identity of a parsed JSON document: SHA-256 of its canonical form.

    Canonical: keys sorted, no insignificant whitespace, non-ASCII as UTF-8, so the same
    resource however it was spaced or ordered has one digest, and any change of content
    (``meta.versionId``, ``meta.lastUpdated`` and every element count) gives another.
    """
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Journal:
    """Appends inbound messages to ``pl:in:P`` streams; asyncio client for the listeners.

    Args:
        client: an asyncio Redis client.
        dedupe_window_s: how long a message's record answers a resend of it; 0: no dedupe.
        rejected_head_bytes: how much of an over-size message ``reject`` keeps.
        shard_digits: hex digits of a dedupe record's shard (``DEDUPE_SHARD_DIGITS``; fewer
            only to measure full hashes without writing millions of records).
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        dedupe_window_s: int,
        *,
        rejected_head_bytes: int = REJECTED_HEAD_BYTES,
        shard_digits: int = DEDUPE_SHARD_DIGITS,
    ) -> None:
        self.client = client
        self.dedupe_window_s = dedupe_window_s
        self.dedupe_bucket_s = dedupe_bucket_s(dedupe_window_s)
        self.rejected_head_bytes = rejected_head_bytes
        self.shard_digits = shard_digits
        self._script = client.register_script(_APPEND)

    async def append(
        self, partition: int, fields: dict[str, Any], *, dedupe: str | None
    ) -> AppendResult:
        """Append one message unless it is a duplicate; record it for the dedupe window.

        Args:
            partition: the patient partition (``pl:in:P``).
            fields: the journal entry; ``fields["id"]`` is its envelope id, ``fields["source"]``
                the receiving adapter.
            dedupe: the message's identity within its adapter (``dedupe_digest``,
                ``content_digest``); a duplicate is the same adapter and the same identity
                within the dedupe window. ``None``: never a duplicate.

        Raises:
            JournalError: Redis refused or could not be reached, or backpressure is on
                (``pl:pressure``); the sender must get AR and resend later.
        """
        source = str(fields["source"])
        shard, field, legacy = "", b"", ""
        if dedupe and self.dedupe_window_s > 0:
            shard, field = dedupe_slot(source, dedupe, self.shard_digits)
            # Upgrade: the version before kept one string key per message (the reply sent). Read
            # for one window after upgrade; remove this (and the script's GET) after that.
            legacy = keys.legacy_dedupe(source, dedupe)
        args: list[Any] = [
            self.dedupe_window_s,
            self.dedupe_bucket_s,
            keys.DEDUPE,
            shard,
            field,
            _pack_id(str(fields["id"])),
            KICK_FLAG_TTL_S,
            partition,
        ]
        for name, value in fields.items():
            if name == "raw":  # sealed once here; the store copies the sealed bytes as they are
                value = sealing.seal(value, str(fields["id"]), "raw")
            args.extend((name, value))
        try:
            reply = await self._script(
                keys=[
                    keys.inbound(partition),
                    legacy,
                    keys.STATS,
                    keys.kick(keys.inbound(partition)),
                    keys.PRESSURE,
                    keys.STANDBY,
                    keys.WAKE,
                    keys.adapter_stats(source),
                ],
                args=args,
            )
        except (redis.RedisError, OSError) as exc:
            raise JournalError(_refusal(exc)) from exc
        created, value = reply[0], reply[1]
        if created == 2:
            reason = value.decode() if isinstance(value, bytes) else str(value)
            msg = f"the broker is not taking messages for now ({reason}); resend later"
            raise JournalError(msg)
        if created == 1:
            return AppendResult(
                entry_id=value.decode() if isinstance(value, bytes) else value,
                kick=reply[2] == 1,
                handed=reply[2] == 2,
            )
        if created == 3:
            return AppendResult(entry_id=None, legacy_reply=value)
        return AppendResult(entry_id=None, duplicate_of=_unpack_id(value))

    async def reject(
        self,
        source: str,
        raw: bytes,
        reason: str,
        peer: str,
        *,
        size: int | None = None,
        sha256: str | None = None,
        ack: bytes | None = None,
        code: str = "",
    ) -> None:
        """Keep input refused at the edge, with its reason, in ``pl:rejected``.

        Args:
            source: the receiving adapter.
            raw: the refused bytes; of an over-size message, its first bytes.
            reason: why it was refused (a sentence; never patient data).
            peer: who sent it.
            size: for an over-size message, the whole payload's size. Then only the first
                ``rejected_head_bytes`` of ``raw`` are kept, with ``size`` and ``sha256``,
                and the reason says so.
            sha256: the hex SHA-256 of the whole payload (with ``size``).
            ack: the answer sent (the message store keeps it).
            code: the answer's ACK code (``AE``, ``AR``) or HTTP status (``422``), counted per
                adapter in ``pl:adapter:SRC`` (``refused:CODE``) and kept with the entry.

        Raises:
            JournalError: Redis could not be reached.
        """
        # The id binds the sealed bytes to this entry (Redis names the entry only once added).
        rejected_id = new_id()
        entry: dict[str, str | bytes | int] = {"id": rejected_id, "source": source, "peer": peer}
        if size is not None:
            head = raw[: self.rejected_head_bytes]
            digest = f", sha256 {sha256}" if sha256 else ""
            reason = f"{reason} (kept: the first {len(head)} of {size} bytes{digest})"
            raw = head
            entry.update(size=size, kept=len(head))
            if sha256:
                entry["sha256"] = sha256
        entry["raw"] = sealing.seal(raw, rejected_id, "raw")
        entry["reason"] = reason
        if ack is not None:
            entry["ack"] = ack
        if code:
            entry["code"] = code
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(keys.REJECTED, entry)
            pipe.hincrby(keys.STATS, "rejected", 1)
            pipe.hincrby(keys.adapter_stats(source), f"refused:{code or '?'}", 1)
            pipe.hset(keys.adapter_stats(source), "last_ms", int(time.time() * 1000))
            await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            msg = f"the journal could not keep a rejected message ({type(exc).__name__})"
            raise JournalError(msg) from exc
