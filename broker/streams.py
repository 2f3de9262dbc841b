"""Consumer-group helpers: one drainer per stream, pending entries first, work detection.

A drainer that passes its consumer group to :func:`drainer_lock` also owns the stream's kick
flag (``pl:kick:STREAM``) while it runs: the flag is set when it takes the lock, so arrivals
queue no task (the running drainer will read them), and :meth:`Lock.finish` looks for work left,
and either keeps the lock or releases it and clears the flag, in one atomic script. An entry
appended before that script ran is read by this drainer; one appended after finds the flag
cleared and queues a task. No window is left between the two (docs/reliability.md §2).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from broker import keys
from broker.dispatch import KICK_FLAG_TTL_S

__all__ = [
    "CONSUMER",
    "DONE",
    "HANDOVER",
    "LOST",
    "MORE",
    "Entry",
    "Lock",
    "drainer_lock",
    "ensure_group",
    "has_work",
    "read_batch",
]

CONSUMER = "drainer"
"""Every drainer of a stream uses this consumer name. Only one runs at a time (the lock), so
the group's pending list is exactly the work a killed drainer left: the next one reads it first
and no XCLAIM is needed."""

Entry = tuple[str, dict[bytes, bytes]]

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_HAS_WORK_LUA = """
local function newer(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  if tonumber(ams) ~= tonumber(bms) then return tonumber(ams) > tonumber(bms) end
  return tonumber(aseq) > tonumber(bseq)
end
local function has_work(stream, group)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then return false end
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == group then
      if tonumber(info['pending']) > 0 then return true end
      local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
      if #last == 0 then return false end
      return newer(last[1][1], info['last-delivered-id'])
    end
  end
  return redis.call('XLEN', stream) > 0
end
"""
# KEYS: lock, kick flag, stream. ARGV: token, lock ttl ms, flag ttl s, group.
# Returns -1 when another drainer holds the lock, else how many entries are pending.
_ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -1 end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
local ok, summary = pcall(redis.call, 'XPENDING', KEYS[3], ARGV[4])
if ok then return summary[1] end
return 0
"""
# KEYS: lock, kick flag, stream. ARGV: token, lock ttl ms, flag ttl s, group, keep ('1'/'0').
_FINISH = (
    _HAS_WORK_LUA
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if has_work(KEYS[3], ARGV[4]) then
  if ARGV[5] == '1' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
    return 1
  end
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
  return 2
end
redis.call('DEL', KEYS[1], KEYS[2])
return 0
"""
)
# KEYS: lock, kick flag. ARGV: token. Release without looking for work (a retry's back-off, an
# error): the flag is cleared with the lock, so the next arrival queues a task as it would.
_STOP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
"""
LOST, DONE, MORE, HANDOVER = -1, 0, 1, 2
"""What :meth:`Lock.finish` came to: the lock was lost to another drainer; no work is left (lock
released, kick flag cleared); work is left and the lock is kept; work is left but the budget
is spent (lock released, flag kept set: the caller queues the next drain)."""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Lock:
    """A held drainer lock; ``renew()`` before its TTL runs out on long batches.

    Attributes:
        pending: entries delivered before and never acknowledged when the lock was taken (0
            when unknown: taken without a group); the first read needs to look at them only
            if there are any.
        finished: :meth:`finish` released the lock (or found it lost).
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        token: bytes,
        ttl_ms: int,
        *,
        stream: str = "",
        group: str | None = None,
        pending: int = 0,
    ) -> None:
        self.client = client
        self.key = key
        self.token = token
        self.ttl_ms = ttl_ms
        self.renewed_at = time.monotonic()
        self.stream = stream
        self.group = group
        self.pending = pending
        self.finished = False

    def finish(self, *, keep: bool) -> int:
        """Look for work left, atomically with what it decides (needs the group).

        Returns:
            ``MORE`` (work left and ``keep``: the lock is renewed, read again), ``DONE`` (no work
            left: lock released, kick flag cleared), ``HANDOVER`` (work left but not ``keep``:
            lock released, flag kept: queue the next drain) or ``LOST`` (another drainer holds
            the lock now; nothing was changed).
        """
        state = int(
            self.client.eval(
                _FINISH,
                3,
                self.key,
                keys.kick(self.stream),
                self.stream,
                self.token,
                self.ttl_ms,
                KICK_FLAG_TTL_S,
                self.group or "",
                "1" if keep else "0",
            )
        )
        if state == MORE:
            self.renewed_at = time.monotonic()
        else:
            self.finished = True
        return state

    def renew(self) -> bool:
        """Extend the lock when a third of its TTL has passed; False if it was lost."""
        now = time.monotonic()
        if (now - self.renewed_at) * 1000 < self.ttl_ms / 3:
            return True
        self.renewed_at = now
        return bool(self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))


@contextmanager
def drainer_lock(
    client: redis.Redis, stream: str, ttl_s: float, *, group: str | None = None
) -> Iterator[Lock | None]:
    """Hold the single-drainer lock of ``stream`` (yields None when another drainer has it).

    If a drainer dies, its lock expires after ``ttl_s``; its unacknowledged entries are then
    read first by the next drainer.

    Args:
        group: the drainer's consumer group. With it, the drainer also owns the stream's kick
            flag: set with the lock (arrivals queue no task while it runs), cleared by
            :meth:`Lock.finish` when no work is left, or on leaving without it; and
            ``Lock.pending`` tells whether the first read must look at pending entries.
    """
    key = keys.lock(stream)
    token = os.urandom(8).hex().encode()
    ttl_ms = int(ttl_s * 1000)
    if group is None:
        if not client.set(key, token, nx=True, px=ttl_ms):
            yield None
            return
        try:
            yield Lock(client, key, token, ttl_ms)
        finally:
            client.eval(_RELEASE, 1, key, token)
        return
    flag = keys.kick(stream)
    pending = int(
        client.eval(_ACQUIRE, 3, key, flag, stream, token, ttl_ms, KICK_FLAG_TTL_S, group)
    )
    if pending < 0:
        yield None
        return
    lock = Lock(client, key, token, ttl_ms, stream=stream, group=group, pending=pending)
    try:
        yield lock
    finally:
        if not lock.finished:
            client.eval(_STOP, 2, key, flag, token)


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
