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
from redis.commands.core import Script

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
    "idle_with_work",
    "read_batch",
    "stream_id",
    "undone_floor",
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
# KEYS: lock, kick flag, stream, hold ('': none). ARGV: token, lock ttl ms, flag ttl s, group,
# first read's count (0: none), hold threshold (epoch seconds), consumer, and for a delivery
# drain ('' otherwise) the envelope key prefix and the subscriber's held-patients hash.
# Returns {-2} when the hold (epoch seconds) is later than the threshold (the kick flag is cleared:
# the scheduled retry drains), {-1} when another drainer holds the lock, else {pending, first}:
# how many entries are pending and, with a count, the first read (pending entries first if any,
# else new ones), as read_batch would do it, so the first batch costs no round trip of its own;
# with the prefix, also each first entry's envelope (GET of the prefix and its 'env' field) and
# whether its patient ('pk') is held (HEXISTS): the delivery drain's own first read.
_ACQUIRE = """
if KEYS[4] ~= '' then
  local hold = redis.call('GET', KEYS[4])
  if hold and tonumber(hold) > tonumber(ARGV[6]) then
    redis.call('DEL', KEYS[2])
    return {-2}
  end
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {-1} end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
local pending = 0
local ok, summary = pcall(redis.call, 'XPENDING', KEYS[3], ARGV[4])
if ok then
  pending = summary[1]
else
  pcall(redis.call, 'XGROUP', 'CREATE', KEYS[3], ARGV[4], '0', 'MKSTREAM')
end
local first = {}
if tonumber(ARGV[5]) > 0 then
  local starts = {'>'}
  if pending > 0 then starts = {'0', '>'} end
  for _, start in ipairs(starts) do
    local reply = redis.call('XREADGROUP', 'GROUP', ARGV[4], ARGV[7], 'COUNT', ARGV[5], 'STREAMS', KEYS[3], start)
    if reply then
      for _, entry in ipairs(reply[1][2]) do
        if entry[2] then table.insert(first, entry) end
      end
    end
    if #first > 0 then break end
  end
end
if ARGV[8] == '' then return {pending, first} end
local envelopes, held = {}, {}
for i, entry in ipairs(first) do
  local env, pk = '', ''
  for j = 1, #entry[2], 2 do
    if entry[2][j] == 'env' then env = entry[2][j + 1] elseif entry[2][j] == 'pk' then pk = entry[2][j + 1] end
  end
  envelopes[i] = redis.call('GET', ARGV[8] .. env)
  held[i] = pk ~= '' and redis.call('HEXISTS', ARGV[9], pk) or 0
end
return {pending, first, envelopes, held}
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


# KEYS: per stream, the stream, its lock and its hold ('': none). ARGV: the hold threshold
# (epoch seconds), then each stream's group. Returns the (1-based) numbers of the streams with
# work, no drainer (no lock) and no hold later than the threshold.
_IDLE_WITH_WORK = (
    _HAS_WORK_LUA
    + """
local idle = {}
for i = 1, #KEYS / 3 do
  local stream, lock, hold = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local waiting = false
  if hold ~= '' then
    local until_s = redis.call('GET', hold)
    waiting = until_s and tonumber(until_s) > tonumber(ARGV[1])
  end
  if not waiting and redis.call('EXISTS', lock) == 0 and has_work(stream, ARGV[i + 1]) then
    table.insert(idle, i)
  end
end
return idle
"""
)

_SCRIPTS = {
    # Bytes need no client to encode them; every call names its client.
    name: Script(None, text.encode())
    for name, text in (
        ("acquire", _ACQUIRE),
        ("finish", _FINISH),
        ("idle_with_work", _IDLE_WITH_WORK),
    )
}
"""Scripts run by EVALSHA (the text is sent once per Redis server, not with every call). In a
MULTI they run by EVAL: a Script there would cost a SCRIPT EXISTS round trip per execute."""


class Lock:
    """A held drainer lock; ``renew()`` before its TTL runs out on long batches.

    Attributes:
        pending: entries delivered before and never acknowledged when the lock was taken (0
            when unknown: taken without a group); the first read needs to look at them only
            if there are any.
        first: the first batch, read when the lock was taken (``drainer_lock(first_read=N)``),
            until :meth:`take_first` hands it over; ``None`` when none was read.
        looked_up: with ``drainer_lock(look_up=...)``, the first batch's envelopes (``None``
            where missing) and the patients among them that are held, until
            :meth:`take_looked_up` hands them over.
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
        first: list[Entry] | None = None,
        looked_up: tuple[list[bytes | None], set[str]] | None = None,
    ) -> None:
        self.client = client
        self.first = first
        self.looked_up = looked_up
        self.key = key
        self.token = token
        self.ttl_ms = ttl_ms
        self.renewed_at = time.monotonic()
        self.stream = stream
        self.group = group
        self.pending = pending
        self.finished = False

    def take_first(self) -> list[Entry] | None:
        """The batch read with the lock, once (``None``: none was read, or it was taken)."""
        first, self.first = self.first, None
        return first

    def take_looked_up(self) -> tuple[list[bytes | None], set[str]] | None:
        """What the lock's script looked up for the first batch, once (``None``: nothing)."""
        looked_up, self.looked_up = self.looked_up, None
        return looked_up

    def finish(self, *, keep: bool) -> int:
        """Look for work left, atomically with what it decides (needs the group).

        Returns:
            ``MORE`` (work left and ``keep``: the lock is renewed, read again), ``DONE`` (no work
            left: lock released, kick flag cleared), ``HANDOVER`` (work left but not ``keep``:
            lock released, flag kept: queue the next drain) or ``LOST`` (another drainer holds
            the lock now; nothing was changed).
        """
        args = self._finish_args(keep)
        reply = _SCRIPTS["finish"](keys=args[:3], args=args[3:], client=self.client)
        return self.finished_with(reply)

    def finish_in(self, pipe: Any, *, keep: bool) -> None:
        """Queue :meth:`finish` as the last command of ``pipe`` (the batch's MULTI), so the
        commit and the look for work left are one round trip and one atomic step; pass that
        command's reply to :meth:`finished_with`."""
        pipe.eval(_FINISH, 3, *self._finish_args(keep))

    def finished_with(self, reply: Any) -> int:
        """Take note of what the finish script (run by :meth:`finish_in`'s pipe) came to."""
        state = int(reply)
        if state == MORE:
            self.renewed_at = time.monotonic()
        else:
            self.finished = True
        return state

    def _finish_args(self, keep: bool) -> tuple[Any, ...]:
        return (
            self.key,
            keys.kick(self.stream),
            self.stream,
            self.token,
            self.ttl_ms,
            KICK_FLAG_TTL_S,
            self.group or "",
            "1" if keep else "0",
        )

    def renew(self) -> bool:
        """Extend the lock when a third of its TTL has passed; False if it was lost."""
        now = time.monotonic()
        if (now - self.renewed_at) * 1000 < self.ttl_ms / 3:
            return True
        self.renewed_at = now
        return bool(self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))


@contextmanager
def drainer_lock(
    client: redis.Redis,
    stream: str,
    ttl_s: float,
    *,
    group: str | None = None,
    first_read: int = 0,
    hold: str | None = None,
    hold_slack_s: float = 0.0,
    look_up: tuple[str, str] | None = None,
) -> Iterator[Lock | None]:
    """Hold the single-drainer lock of ``stream`` (yields None when another drainer has it).

    If a drainer dies, its lock expires after ``ttl_s``; its unacknowledged entries are then
    read first by the next drainer.

    Args:
        group: the drainer's consumer group. With it, the drainer also owns the stream's kick
            flag: set with the lock (arrivals queue no task while it runs), cleared by
            :meth:`Lock.finish` when no work is left, or on leaving without it; and
            ``Lock.pending`` tells whether the first read must look at pending entries.
        first_read: with ``group``, also read the first batch of up to this many entries in the
            same script (``Lock.take_first``), as :func:`read_batch` would.
        hold: with ``group``, a key holding epoch seconds before which the stream must not be
            drained (a retry's back-off): when it is later than now + ``hold_slack_s`` (this
            process's clock, as the worker that set it used its own), the kick flag is cleared
            and None yielded, in the same script.
        look_up: with ``first_read``, ``(envelope key prefix, held-patients hash)``: the script
            also reads the first batch's envelopes (each entry's ``env`` field) and which of
            its patients (``pk``) are held (``Lock.take_looked_up``), a delivery drain's first
            read, in the same round trip.
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
    reply: Any = _SCRIPTS["acquire"](
        keys=[key, flag, stream, hold or ""],
        args=[
            token,
            ttl_ms,
            KICK_FLAG_TTL_S,
            group,
            first_read,
            time.time() + hold_slack_s,
            CONSUMER,
            *(look_up or ("", "")),
        ],
        client=client,
    )
    pending = int(reply[0])
    if pending < 0:
        yield None
        return
    first = None
    looked_up = None
    if first_read > 0:
        first = [(eid.decode(), _pairs(fields)) for eid, fields in reply[1]]
        if look_up is not None:
            held = {
                fields.get(b"pk", b"").decode()
                for (_, fields), is_held in zip(first, reply[3], strict=True)
                if is_held
            }
            looked_up = (list(reply[2]), held)
    lock = Lock(
        client,
        key,
        token,
        ttl_ms,
        stream=stream,
        group=group,
        pending=pending,
        first=first,
        looked_up=looked_up,
    )
    try:
        yield lock
    finally:
        if not lock.finished:
            client.eval(_STOP, 2, key, flag, token)


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A stream entry's fields as a script returns them (name, value, …) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


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
    return int(client.xlen(stream)) > 0


def idle_with_work(
    client: redis.Redis, streams: list[tuple[str, str, str | None]], *, now: float
) -> list[int]:
    """Which streams have work and no drainer, in one round trip (the periodic re-kick's scan).

    Args:
        client: the broker's Redis.
        streams: ``(stream, group, hold key or None)``; a stream whose hold (epoch seconds) is
            later than ``now`` waits out a retry's back-off and is left to its scheduled retry.
        now: the hold threshold (epoch seconds).

    Returns:
        The indexes in ``streams`` of those with work (``has_work``), no lock and no hold.
    """
    if not streams:
        return []
    names: list[str] = []
    for stream, _, hold in streams:
        names += [stream, keys.lock(stream), hold or ""]
    groups = [group for _, group, _ in streams]
    found = _SCRIPTS["idle_with_work"](keys=names, args=[repr(now), *groups], client=client)
    return [int(i) - 1 for i in found]


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def stream_id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id (``ms-seq``) as a comparable pair."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def undone_floor(client: redis.Redis, stream: str, group: str) -> tuple[int, int] | None:
    """The id of the oldest entry of ``stream`` that ``group`` has not finished, or ``None``.

    Unfinished: read and not acknowledged (the pending list's smallest id), or not read yet
    (after the group's last-delivered id). A stream without the group is all unfinished.
    ``None`` when there is no such stream (nothing to trim).
    """
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    named = (
        g
        for g in groups
        if (g["name"].decode() if isinstance(g["name"], bytes) else g["name"]) == group
    )
    info = next(named, None)
    if info is None:
        return (0, 0)
    floors = []
    if int(info["pending"]):
        summary: Any = client.xpending(stream, group)
        if summary and summary.get("min"):
            floors.append(stream_id(summary["min"]))
    last = stream_id(info["last-delivered-id"])
    floors.append((last[0], last[1] + 1))
    return min(floors)
