"""Operator actions on deliveries: replay or discard a dead letter, correct it, resend anything.

Every action is recorded on the dead letter's history and in the audit trail (``broker.audit``,
through ``pl:store`` on the action's own MULTI) with who and why.
Replays are idempotent for receivers: the envelope id and its deterministic resource ids stay the
same, FHIR deliveries are conditional updates, and HL7 v2 deliveries keep the inbound MSH-10.

An envelope Redis no longer holds (the store's writer drops those of finished messages,
docs/reliability.md §15) is taken from the dead letter's record, else rebuilt from the message
store (``stored``): same id, same canonical Bundle, so the same resource ids.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import redis

from broker import keys, trail
from broker.audit.reasons import ReasonError, check_reason
from broker.canonical import check, validate_bundle
from broker.delivery.dead_letter import DeadLetterStore
from broker.delivery.edit import changes, diff_digest, patient_identifiers
from broker.envelope import Envelope, MessageState, new_id
from broker.errors import BrokerError

__all__ = ["IdentityEditRefused", "MessageNotFound", "OperationError", "Operations"]

Enqueue = Callable[[str, list[Any]], None]
"""Queues a Celery task by name with its arguments."""
Lookup = Callable[[str], Envelope | None]
"""The envelope of a message id as the message store holds it (``broker.store.StoredEnvelopes``)."""


class OperationError(BrokerError):
    """Raised when an operator action cannot be done; the message says why and what to do."""


class MessageNotFound(OperationError):
    """Raised when neither Redis nor the message store holds the message an action names."""


class IdentityEditRefused(OperationError):
    """Raised when an edit changes a patient's identifiers without the ``identity.edit`` right."""


class Operations:
    """Replay, discard, correct and resend, as the CLI and the API offer them.

    Args:
        client: the broker's Redis.
        enqueue: queues ``passerelle.release_patient`` and ``passerelle.drain_outbound`` tasks.
        subscribers: the outbound adapter ids that exist.
        retention_s: how long a restored envelope is kept.
        stored: where an envelope Redis no longer holds is found (the message store); none:
            such a message cannot be sent again.
    """

    def __init__(
        self,
        client: redis.Redis,
        enqueue: Enqueue,
        subscribers: list[str],
        retention_s: int,
        stored: Lookup | None = None,
    ) -> None:
        self.client = client
        self.store = DeadLetterStore(client)
        self.enqueue = enqueue
        self.subscribers = subscribers
        self.retention_s = retention_s
        self.stored = stored

    @contextmanager
    def _exclusive(self, dead_id: str) -> Iterator[None]:
        """One operator action on a dead letter at a time (two clicks must not replay twice)."""
        key = keys.lock(f"dl:{dead_id}")
        if not self.client.set(key, b"1", nx=True, px=10_000):
            msg = f"dead letter {dead_id} is being changed by another action; try again"
            raise OperationError(msg)
        try:
            yield
        finally:
            self.client.delete(key)

    def _record(self, subscriber: str, dead_id: str) -> dict[str, Any]:
        self._subscriber(subscriber)
        record = self.store.get(subscriber, dead_id)
        if record is None:
            msg = f"no dead letter {dead_id} for subscriber {subscriber}"
            raise OperationError(msg)
        return record

    def _subscriber(self, subscriber: str) -> None:
        if subscriber not in self.subscribers:
            msg = (
                f"no outbound adapter {subscriber!r}; expected one of {', '.join(self.subscribers)}"
            )
            raise OperationError(msg)

    def _note(self, record: dict[str, Any], action: str, who: str, why: str, **extra: Any) -> None:
        record["history"].append(
            {"action": action, "who": who, "why": why, "at": time.time(), **extra}
        )
        self.store.save(record)
        pipe = self.client.pipeline(transaction=True)
        self.store.audit(
            action,
            who=who,
            why=why,
            subscriber=record["subscriber"],
            target=record["id"],
            envelope=record["envelope_id"],
            details={k: v for k, v in extra.items() if isinstance(v, str | int)},
            pipe=pipe,
        )
        trail.acted(
            pipe,
            record["subscriber"],
            record["envelope_id"],
            action,
            who=who,
            why=why,
            target=record["id"],
        )
        new_state = "discarded" if action == "discarded" else "replayed"
        trail.state(pipe, record["subscriber"], record["envelope_id"], new_state, reason=why)
        pipe.execute()

    def replay(
        self,
        subscriber: str,
        dead_id: str,
        *,
        who: str,
        why: str,
        corrected: dict[str, Any] | None = None,
        identity_edit: bool = False,
    ) -> dict[str, Any]:
        """Send a dead letter again as it was, or an edited copy of it as a new message.

        For a held patient the release delivers it first, then the patient's parked messages
        in order. Returns the updated record. With ``corrected`` see ``edit``.

        Raises:
            OperationError: unknown subscriber or dead letter, or not open; of an edit, a
                reason that says nothing or an identity change without ``identity_edit``.
            CanonicalError: the corrected Bundle is not valid FHIR R4 or fails the checks.
        """
        with self._exclusive(dead_id):
            if corrected is not None:
                return self._edit(
                    subscriber,
                    dead_id,
                    who=who,
                    why=why,
                    corrected=corrected,
                    identity_edit=identity_edit,
                )
            return self._replay(subscriber, dead_id, who=who, why=why, corrected=None)

    def _edit(
        self,
        subscriber: str,
        dead_id: str,
        *,
        who: str,
        why: str,
        corrected: dict[str, Any],
        identity_edit: bool,
    ) -> dict[str, Any]:
        """Take an edited copy of a dead letter's message in as a new message, for its subscriber.

        The original is kept as it was (the dead letter becomes ``edited``, its message
        ``edited`` for the subscriber); the copy gets a new id, ``edit_of`` the original and
        ``edit`` the diff, passes the checks every mapped message passes, and takes the
        original's place: at the head of a held patient's parked messages, else in the queue.
        """
        try:
            reason = check_reason(why)
        except ReasonError as exc:
            raise OperationError(str(exc)) from exc
        record = self._record(subscriber, dead_id)
        if record["status"] != "open":
            msg = f"dead letter {dead_id} is {record['status']}; only an open dead letter can be edited"
            raise OperationError(msg)
        original = self._original(record)
        validate_bundle(corrected)
        check(original.event or "", corrected)
        if original.bundle is None:
            msg = f"message {original.id} has no canonical form to edit"
            raise OperationError(msg)
        identity = patient_identifiers(original.bundle) != patient_identifiers(corrected)
        if identity and not identity_edit:
            msg = (
                "the edit changes the patient's identifiers (PID-3, Patient.identifier): "
                "that needs the identity.edit permission (admin)"
            )
            raise IdentityEditRefused(msg)
        diff = changes(original.bundle, corrected)
        if not diff:
            msg = "the corrected message is the same as the original; replay it instead"
            raise OperationError(msg)
        copy = original.model_copy(
            update={
                "id": new_id(),
                "bundle": corrected,
                "journal_id": None,
                "received_at": datetime.now(UTC),
                "state": MessageState.ROUTED,
                "reason": None,
                "edit_of": original.id,
                "edit": {"who": who, "why": reason, "dead_letter": dead_id, "diff": diff},
            }
        )
        facts = {
            "edited_to": copy.id,
            "paths": ",".join(c["path"] for c in diff)[:1000],
            "diff_sha256": diff_digest(diff),
            "identity_changed": int(identity),
        }
        record["status"] = "edited"
        record["history"].append(
            {"action": "edited", "who": who, "why": reason, "at": time.time(), **facts}
        )
        self.store.save(record)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(keys.envelope(copy.id), copy.sealed(), ex=self.retention_s)
        trail.edited(pipe, copy, subscriber)
        trail.acted(pipe, subscriber, original.id, "edited", who=who, why=reason, target=dead_id)
        trail.state(pipe, subscriber, original.id, "edited", reason=f"replaced by {copy.id}")
        self.store.audit(
            "message.edited",
            who=who,
            why=reason,
            subscriber=subscriber,
            target=dead_id,
            envelope=original.id,
            details=facts,
            pipe=pipe,
        )
        pipe.execute()
        if record["holds_patient"]:
            self._take_head(subscriber, record["patient"], original.id, copy.id)
            self.enqueue("passerelle.release_patient", [subscriber, record["patient"]])
        else:
            self._queue(subscriber, copy, None)
        return record

    def _original(self, record: dict[str, Any]) -> Envelope:
        """The dead letter's message as it was (Redis, the record, else the message store)."""
        raw = self.client.get(keys.envelope(record["envelope_id"]))
        if raw is not None:
            return Envelope.unsealed(raw, record["envelope_id"])
        if record.get("envelope"):
            return Envelope.model_validate(record["envelope"])
        found = self._find(record["envelope_id"])
        if found is None:
            msg = f"dead letter {record['id']} kept no payload and its message is gone; nothing to edit"
            raise OperationError(msg)
        return found

    def _take_head(self, subscriber: str, patient: str, old_id: str, new_id_: str) -> None:
        """Put the edited copy in the original's place at the head of the patient's parked
        messages (rewritten in one MULTI, watched: a message parked meanwhile is not lost)."""
        stream = keys.parked(subscriber, patient)
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.watch(stream)
                entries: list[tuple[bytes, dict[bytes, bytes]]] = pipe.xrange(stream)
                if not entries or entries[0][1].get(b"env") != old_id.encode():
                    pipe.unwatch()
                    return
                pipe.multi()
                pipe.delete(stream)
                for index, (_, fields) in enumerate(entries):
                    moved = dict(fields)
                    if index == 0:
                        moved[b"env"] = new_id_.encode()
                        moved.pop(b"dead", None)
                    pipe.xadd(stream, moved)
                try:
                    pipe.execute()
                except redis.WatchError:
                    continue
                return

    def _replay(
        self, subscriber: str, dead_id: str, *, who: str, why: str, corrected: dict[str, Any] | None
    ) -> dict[str, Any]:
        record = self._record(subscriber, dead_id)
        if record["status"] not in ("open",):
            msg = f"dead letter {dead_id} is {record['status']}; only an open dead letter can be replayed"
            raise OperationError(msg)
        envelope = self._restore(record, corrected)
        extra: dict[str, Any] = {}
        if corrected is not None:
            extra["corrected_sha256"] = hashlib.sha256(
                json.dumps(corrected, sort_keys=True).encode()
            ).hexdigest()
        record["status"] = "replaying"
        self._note(
            record,
            "edited and replayed" if corrected is not None else "replayed",
            who,
            why,
            **extra,
        )
        if record["holds_patient"]:
            self.enqueue("passerelle.release_patient", [subscriber, record["patient"]])
        else:
            self._queue(subscriber, envelope, dead_id)
        return record

    def discard(self, subscriber: str, dead_id: str, *, who: str, why: str) -> dict[str, Any]:
        """Give up a dead letter for good; a held patient's later messages are then delivered.

        Raises:
            OperationError: unknown subscriber or dead letter, or not open.
        """
        with self._exclusive(dead_id):
            return self._discard(subscriber, dead_id, who=who, why=why)

    def _discard(self, subscriber: str, dead_id: str, *, who: str, why: str) -> dict[str, Any]:
        record = self._record(subscriber, dead_id)
        if record["status"] != "open":
            msg = f"dead letter {dead_id} is {record['status']}; only an open dead letter can be discarded"
            raise OperationError(msg)
        record["status"] = "discarded"
        self._note(record, "discarded", who, why)
        if record["holds_patient"]:
            parked = keys.parked(subscriber, record["patient"])
            head: list[tuple[bytes, dict[bytes, bytes]]]
            head = self.client.xrange(parked, count=1)
            if head and head[0][1].get(b"env", b"").decode() == record["envelope_id"]:
                self.client.xdel(parked, head[0][0])
            self.enqueue("passerelle.release_patient", [subscriber, record["patient"]])
        return record

    def replay_matching(
        self,
        subscriber: str,
        *,
        who: str,
        why: str,
        since: float | None = None,
        until: float | None = None,
        text: str | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """Replay every open dead letter of a subscriber matching the filter.

        Returns:
            The ids replayed, and the ids that could not be, each with the reason.
        """
        self._subscriber(subscriber)
        chosen = self.store.find(
            subscriber, status="open", since=since, until=until, text=text, limit=100_000
        )
        replayed: list[str] = []
        failed: dict[str, str] = {}
        # Oldest first, so one patient's dead letters go back in their original order.
        for record in sorted(chosen, key=lambda r: r["dead_lettered_at"]):
            try:
                self.replay(subscriber, record["id"], who=who, why=why)
            except OperationError as exc:
                failed[record["id"]] = str(exc)
            else:
                replayed.append(record["id"])
        return replayed, failed

    def resend(self, envelope_id: str, subscriber: str, *, who: str, why: str) -> None:
        """Queue any stored message for a subscriber again (``passerelle replay ID --to SUB``).

        The envelope comes from Redis, else from the message store (same id, same Bundle).

        Raises:
            MessageNotFound: neither Redis nor the message store has the message.
            OperationError: unknown subscriber, a message that failed (no canonical form), or a
                message store that cannot be read.
        """
        self._subscriber(subscriber)
        envelope = self._find(envelope_id)
        if envelope is None:
            msg = f"no stored message {envelope_id} (unknown, or older than the retention)"
            raise MessageNotFound(msg)
        if envelope.bundle is None:
            msg = f"message {envelope_id} has no canonical form ({envelope.state.value}: {envelope.reason}); nothing to send"
            raise OperationError(msg)
        # One MULTI: the envelope is (re)set with the record that marks it re-queued
        # (pl:reopened), so the store's writer cannot drop it between the two.
        pipe = self.client.pipeline(transaction=True)
        pipe.set(keys.envelope(envelope.id), envelope.sealed(), ex=self.retention_s)
        trail.acted(pipe, subscriber, envelope_id, "resent", who=who, why=why, target=envelope_id)
        trail.state(pipe, subscriber, envelope_id, "replayed", reason=why)
        self.store.audit(
            "resent", who=who, why=why, subscriber=subscriber, target=envelope_id, pipe=pipe
        )
        self._queue(subscriber, envelope, None, pipe=pipe)
        pipe.execute()
        self.enqueue("passerelle.drain_outbound", [subscriber, envelope.partition or 0])

    def _find(self, envelope_id: str) -> Envelope | None:
        """The envelope from Redis, else from the message store; ``None`` if neither has it.

        Raises:
            OperationError: Redis does not have it and the message store cannot be read.
        """
        raw = self.client.get(keys.envelope(envelope_id))
        if raw is not None:
            return Envelope.unsealed(raw, envelope_id)
        if self.stored is None:
            return None
        try:
            return self.stored(envelope_id)
        except BrokerError as exc:
            msg = f"message {envelope_id} is no longer in Redis and the message store cannot be read: {exc}"
            raise OperationError(msg) from exc

    def _restore(self, record: dict[str, Any], corrected: dict[str, Any] | None) -> Envelope:
        """Put the envelope (kept in the record, possibly corrected) back where senders read it."""
        raw = self.client.get(keys.envelope(record["envelope_id"]))
        found: Envelope | None = None
        if raw is not None:
            found = Envelope.unsealed(raw, record["envelope_id"])
        elif record.get("envelope"):
            found = Envelope.model_validate(record["envelope"])
        else:
            found = self._find(record["envelope_id"])
        if found is None:
            msg = (
                f"dead letter {record['id']} kept no payload and its message is neither in Redis "
                "nor in the message store; nothing to replay"
            )
            raise OperationError(msg)
        envelope = found
        if corrected is not None:
            validate_bundle(corrected)
            envelope = envelope.model_copy(update={"bundle": corrected})
        self.client.set(keys.envelope(envelope.id), envelope.sealed(), ex=self.retention_s)
        return envelope

    def _queue(
        self, subscriber: str, envelope: Envelope, dead_id: str | None, pipe: Any = None
    ) -> None:
        """Queue the envelope for the subscriber; on ``pipe``, the caller queues the drain."""
        partition = envelope.partition or 0
        fields: dict[str, str] = {
            "env": envelope.id,
            "pk": envelope.partition_key or "",
            "partition": str(partition),
        }
        if dead_id is not None:
            fields["dead"] = dead_id
        if pipe is not None:
            pipe.xadd(keys.outbound(subscriber, partition), fields)
            return
        self.client.xadd(keys.outbound(subscriber, partition), fields)
        self.enqueue("passerelle.drain_outbound", [subscriber, partition])
