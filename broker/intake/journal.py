"""The journal: raw inbound messages appended to Redis Streams before anything is acknowledged."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from broker import keys
from broker.dispatch import KICK_FLAG_TTL_S
from broker.errors import JournalError

__all__ = [
    "REJECTED_HEAD_BYTES",
    "AppendResult",
    "Journal",
    "content_digest",
    "dedupe_digest",
]

REJECTED_HEAD_BYTES = 64 * 1024
"""Of an over-size message, only this many first bytes are kept in ``pl:rejected`` (with the
whole payload's size and SHA-256): enough to read its header, not 10 MiB kept forever."""

# One round trip, atomically: a duplicate (KEYS[2], which names the receiving adapter) returns the
# stored ACK; otherwise the raw message is appended to its partition stream, the ACK we are about
# to send is stored for resends, and the partition's kick flag is set. When the flag is fresh (no
# drain queued or running), the partition goes to a worker waiting in standby if one is free
# (``broker.standby``: live waiters in KEYS[6] outnumber the partitions already handed to
# them in KEYS[7]); the third result says 0: a drain is under way, 1: queue a drain task, 2: a
# waiting worker drains it. KEYS[8] counts the adapter's messages and their last time.
_APPEND = """
local pressure = redis.call('GET', KEYS[5])
if pressure then
  return {2, pressure}
end
if KEYS[2] ~= '' then
  local previous = redis.call('GET', KEYS[2])
  if previous then
    redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
    return {0, previous}
  end
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5))
redis.call('HINCRBY', KEYS[8], 'received', 1)
redis.call('HSET', KEYS[8], 'last_ms', string.match(id, '^%d+'))
if KEYS[2] ~= '' and tonumber(ARGV[1]) > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1])
end
redis.call('HINCRBY', KEYS[3], 'received', 1)
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[3]) then
  return {1, id, 0}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
if redis.call('ZCOUNT', KEYS[6], now, '+inf') > redis.call('LLEN', KEYS[7]) then
  redis.call('RPUSH', KEYS[7], ARGV[4])
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
    previous_ack: bytes | None
    """For a duplicate, the ACK that was sent the first time."""
    kick: bool = False
    """True when no drain task was queued for the partition yet: the caller must queue one."""
    handed: bool = False
    """True when a worker waiting in standby takes the partition (no task to queue)."""


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
        dedupe_window_s: how long a stored ACK answers a resent duplicate.
        rejected_head_bytes: how much of an over-size message ``reject`` keeps.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        dedupe_window_s: int,
        *,
        rejected_head_bytes: int = REJECTED_HEAD_BYTES,
    ) -> None:
        self.client = client
        self.dedupe_window_s = dedupe_window_s
        self.rejected_head_bytes = rejected_head_bytes
        self._script = client.register_script(_APPEND)

    async def append(
        self, partition: int, fields: dict[str, Any], *, dedupe: str | None, ack: bytes
    ) -> AppendResult:
        """Append one message unless it is a duplicate; store ``ack`` for future duplicates.

        Args:
            partition: the patient partition (``pl:in:P``).
            fields: the journal entry; ``fields["source"]`` is the receiving adapter.
            dedupe: the message's identity within its adapter (``dedupe_digest``,
                ``content_digest``); a duplicate is the same adapter and the same identity
                within the dedupe window. ``None``: never a duplicate.
            ack: the answer sent now, stored for duplicates.

        Raises:
            JournalError: Redis refused or could not be reached, or backpressure is on
                (``pl:pressure``); the sender must get AR and resend later.
        """
        args: list[Any] = [self.dedupe_window_s, ack, KICK_FLAG_TTL_S, partition]
        for name, value in fields.items():
            args.extend((name, value))
        dedupe_key = keys.dedupe(str(fields["source"]), dedupe) if dedupe else ""
        try:
            reply = await self._script(
                keys=[
                    keys.inbound(partition),
                    dedupe_key,
                    keys.STATS,
                    keys.kick(keys.inbound(partition)),
                    keys.PRESSURE,
                    keys.STANDBY,
                    keys.WAKE,
                    keys.adapter_stats(str(fields["source"])),
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
        if created:
            return AppendResult(
                entry_id=value.decode() if isinstance(value, bytes) else value,
                previous_ack=None,
                kick=reply[2] == 1,
                handed=reply[2] == 2,
            )
        return AppendResult(entry_id=None, previous_ack=value)

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
        entry: dict[str, str | bytes | int] = {"source": source, "raw": raw, "peer": peer}
        if size is not None:
            head = raw[: self.rejected_head_bytes]
            digest = f", sha256 {sha256}" if sha256 else ""
            reason = f"{reason} (kept: the first {len(head)} of {size} bytes{digest})"
            entry.update(raw=head, size=size, kept=len(head))
            if sha256:
                entry["sha256"] = sha256
        entry["reason"] = reason
        if ack is not None:
            entry["ack"] = ack
        if code:
            entry["code"] = code
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(keys.REJECTED, entry)  # type: ignore[arg-type]
            pipe.hincrby(keys.STATS, "rejected", 1)
            pipe.hincrby(keys.adapter_stats(source), f"refused:{code or '?'}", 1)
            pipe.hset(keys.adapter_stats(source), "last_ms", int(time.time() * 1000))
            await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            msg = f"the journal could not keep a rejected message ({type(exc).__name__})"
            raise JournalError(msg) from exc
