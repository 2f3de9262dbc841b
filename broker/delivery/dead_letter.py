"""Dead letters: what a subscriber refused for good, the patients they hold, and their resolution.

A delivery that fails for good (HTTP 4xx) or runs out of retries becomes a dead letter: a record
with the envelope as it was, every attempt with the receiver's reply, timestamps and the reason.
Under the subscriber's ``on_exhausted: hold`` policy the patient is then *held* for that
subscriber (PK, the patient key, is ``Envelope.partition_key``: ``broker.identity``'s
``system|value``, the same identity as the delivered Patient's conditional URL): the failed
message heads ``pl:parked:SUB:PK`` and that patient's later messages are
appended behind it instead of being sent, while every other patient goes on. Replaying the dead
letter (as it was, or with a corrected payload) or discarding it *releases* the patient: the parked
messages are delivered in order, and the hold is lifted only once the parked stream is empty.

The ids of the open dead letters are kept in a set (``pl:dlopen:SUB``), changed in the same MULTI
as the record's status, so ``/metrics`` and the overview count them without reading a record.

Parking and lifting are Lua scripts, so a message can never be parked after the release that
should have delivered it has finished.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import redis

from broker import keys, sealing, trail
from broker.audit.events import record as audit_record
from broker.audit.events import viewed as audit_viewed
from broker.envelope import new_id

__all__ = [
    "DeadLetterStore",
    "Status",
]

Status = Literal["open", "replaying", "delivered", "discarded", "edited"]
"""``edited``: superseded by an edited copy, a new message (``broker.delivery.edit``)."""

# Parking also tells the message store (KEYS[3], broker.trail's `st` record) in the same call.
_PARK_IF_HELD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', 'env', ARGV[2], 'pk', ARGV[1], 'partition', ARGV[3])
  redis.call('XADD', KEYS[3], '*', 'k', 'st', 'env', ARGV[2], 'sub', ARGV[4], 'st', 'parked',
    'why', 'behind a dead letter', 'dead', '', 'at', ARGV[5])
  return 1
end
return 0
"""
_LIFT_IF_EMPTY = """
if redis.call('XLEN', KEYS[2]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


class DeadLetterStore:
    """Reads and writes dead letters, holds and the audit trail in Redis.

    Args:
        client: a Redis client (``decode_responses=False``).
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._park = client.register_script(_PARK_IF_HELD)
        self._lift = client.register_script(_LIFT_IF_EMPTY)

    # --- the delivery side -------------------------------------------------------------------

    def add(
        self,
        pipe: Any,
        *,
        subscriber: str,
        envelope_id: str,
        envelope_json: bytes | None,
        partition: int,
        patient: str,
        entry_id: str,
        reason: str,
        attempts: list[dict[str, Any]],
        hold: bool,
        park: bool = True,
    ) -> str:
        """Record a dead letter (queued on ``pipe``); with ``hold``, hold the patient behind it.

        ``park=False`` when the message already heads the patient's parked stream (it failed
        while the patient was being released).

        Returns:
            The dead letter's id.
        """
        dead_id = new_id()
        now = time.time()
        holds = hold and bool(patient)
        record = {
            "id": dead_id,
            "subscriber": subscriber,
            "envelope_id": envelope_id,
            "entry_id": entry_id,
            "partition": partition,
            "patient": patient,
            "reason": reason,
            "attempts": attempts,
            "first_attempt_at": attempts[0]["at"] if attempts else now,
            "dead_lettered_at": now,
            "status": "open",
            "holds_patient": holds,
            "envelope": _kept(envelope_json),
            "history": [],
        }
        pipe.hset(keys.dead_records(subscriber), dead_id, json.dumps(record))
        pipe.xadd(
            keys.dead(subscriber),
            {"id": dead_id, "envelope": envelope_id, "reason": reason, "at": str(now)},
        )
        pipe.hincrby(keys.STATS, f"dead_lettered:{subscriber}", 1)
        trail.state(
            pipe, subscriber, envelope_id, "dead_lettered", reason=reason, dead_letter=dead_id
        )
        pipe.sadd(keys.dead_open(subscriber), dead_id)
        if holds:
            pipe.hset(keys.held(subscriber), patient, dead_id)
        if holds and park:
            pipe.xadd(
                keys.parked(subscriber, patient),
                {"env": envelope_id, "pk": patient, "partition": str(partition), "dead": dead_id},
            )
        return dead_id

    def park_if_held(self, subscriber: str, patient: str, envelope_id: str, partition: int) -> bool:
        """Append the message to the patient's parked stream if the patient is held (atomic)."""
        if not patient:
            return False
        return bool(
            self._park(
                keys=[keys.held(subscriber), keys.parked(subscriber, patient), keys.STORE],
                args=[patient, envelope_id, partition, subscriber, repr(time.time())],
            )
        )

    def lift_if_empty(self, subscriber: str, patient: str) -> bool:
        """Lift the patient's hold when nothing is parked any more (atomic); True if lifted."""
        return bool(
            self._lift(
                keys=[keys.held(subscriber), keys.parked(subscriber, patient)], args=[patient]
            )
        )

    # --- the operator side --------------------------------------------------------------------

    def get(self, subscriber: str, dead_id: str) -> dict[str, Any] | None:
        """One dead letter's record, or None."""
        raw = self.client.hget(keys.dead_records(subscriber), dead_id)
        return _opened(json.loads(raw)) if raw else None

    def save(self, record: dict[str, Any]) -> None:
        """Write back a record after changing its status or history; the open index with it."""
        subscriber, dead_id = record["subscriber"], record["id"]
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.dead_records(subscriber), dead_id, json.dumps(_resealed(record)))
        if record["status"] == "open":
            pipe.sadd(keys.dead_open(subscriber), dead_id)
        else:
            pipe.srem(keys.dead_open(subscriber), dead_id)
        pipe.execute()

    def open_count(self, subscriber: str) -> int:
        """How many of ``subscriber``'s dead letters are open (the index: no record is read)."""
        return int(self.client.scard(keys.dead_open(subscriber)))

    def reopen(
        self, subscriber: str, dead_id: str, attempts: list[dict[str, Any]], reason: str
    ) -> None:
        """A replay of the dead letter failed: open again, with the new attempts and why."""
        record = self.get(subscriber, dead_id)
        if record is not None:
            record["status"] = "open"
            record["attempts"].extend(attempts)
            record["history"].append(
                {"action": "replay failed", "at": time.time(), "reason": reason}
            )
            self.save(record)
            trail.state(
                self.client,
                subscriber,
                record["envelope_id"],
                "dead_lettered",
                reason=reason,
                dead_letter=dead_id,
            )

    def resolve(self, subscriber: str, dead_id: str) -> None:
        """A replay of the dead letter was delivered: mark it so."""
        record = self.get(subscriber, dead_id)
        if record is not None:
            record["status"] = "delivered"
            record["history"].append({"action": "delivered", "at": time.time()})
            self.save(record)

    def find(
        self,
        subscriber: str,
        *,
        status: Status | None = "open",
        since: float | None = None,
        until: float | None = None,
        text: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Dead letters of one subscriber, newest first, filtered by status, time and reason text."""
        records = [_opened(json.loads(v)) for v in self.client.hvals(keys.dead_records(subscriber))]
        chosen = [
            r
            for r in records
            if (status is None or r["status"] == status)
            and (since is None or r["dead_lettered_at"] >= since)
            and (until is None or r["dead_lettered_at"] <= until)
            and (text is None or text.lower() in _searchable(r))
        ]
        chosen.sort(key=lambda r: r["dead_lettered_at"], reverse=True)
        return chosen[:limit]

    def subscribers(self) -> list[str]:
        """Subscribers that have dead letters."""
        return sorted(k.decode().removeprefix("pl:dl:") for k in self.client.scan_iter("pl:dl:*"))

    def viewed(self, record: dict[str, Any], *, who: str, why: str | None) -> None:
        """Audit a view of one dead letter: ``content.viewed`` with the reason given for its
        envelope and patient, ``message.viewed`` when they were withheld (no reason)."""
        audit_viewed(
            self.client,
            who=who,
            why=why,
            view="dead_letter",
            subscriber=str(record["subscriber"]),
            envelope=record["envelope_id"],
            dead_letter=str(record["id"]),
        )

    def audit(
        self,
        action: str,
        *,
        who: str,
        why: str,
        subscriber: str,
        target: str,
        envelope: str | None = None,
        details: dict[str, Any] | None = None,
        pipe: Any = None,
    ) -> None:
        """Send an operator's action or view to the audit trail (``broker.audit``).

        ``action`` is the trail's name (``message.replayed``) or one of the names the dead
        letters' history uses (``replayed``, ``viewed``…), translated. ``target`` is the dead
        letter or the message acted on; ``details`` ids and digests; on ``pipe``, with the
        action's MULTI.
        """
        name = _AUDIT_ACTIONS.get(action, action)
        targets: dict[str, Any] = {"envelope": envelope}
        targets["envelope" if name == "message.resent" else "dead_letter"] = target or None
        audit_record(
            pipe if pipe is not None else self.client,
            name,
            who=who,
            why=why,
            details=details,
            subscriber=subscriber or None,
            **targets,
        )


_AUDIT_ACTIONS = {
    "viewed": "content.viewed",
    "replayed": "message.replayed",
    "edited and replayed": "message.edited",
    "discarded": "message.discarded",
    "resent": "message.resent",
}
"""The dead letters' history names → the audit trail's."""


def _kept(envelope_json: bytes | None) -> dict[str, Any] | str | None:
    """The envelope as a dead letter keeps it: the sealed bytes of ``pl:env:ID`` in their text
    form (copied, not sealed again), or the JSON as it is when encryption is off."""
    if not envelope_json:
        return None
    if sealing.is_sealed(envelope_json):
        return sealing.as_text(envelope_json)
    parsed: dict[str, Any] = json.loads(envelope_json)
    return parsed


def _opened(record: dict[str, Any]) -> dict[str, Any]:
    """A record with its envelope opened (a record written in clear is read as it is)."""
    kept = record.get("envelope")
    if isinstance(kept, str):
        record["envelope"] = json.loads(sealing.open_text(kept, record["envelope_id"], "env"))
    return record


def _resealed(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of a record to write back, its envelope sealed again (``_opened`` opened it)."""
    kept = record.get("envelope")
    if not isinstance(kept, dict):
        return record
    text = json.dumps(kept, separators=(",", ":"))
    return {**record, "envelope": sealing.seal_text(text, record["envelope_id"], "env")}


def _searchable(record: dict[str, Any]) -> str:
    replies = " ".join(
        str(a.get("reply") or "") + " " + str(a.get("error") or "") for a in record["attempts"]
    )
    return f"{record['reason']} {replies}".lower()
