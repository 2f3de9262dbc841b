"""The inbound edge for HL7 v2: read the header, journal the bytes, then acknowledge.

Original acknowledgment mode (v2.5.1 §2.9.2): AA only once the raw bytes are in the journal;
AE when the message cannot be read at all; AR when no mapping handles its type and version, when
a frame holds two messages, when MSH-3/MSH-4 name a sender the adapter does not accept
(``senders:``), when it is over the size limit, or when the journal cannot accept it. Everything
refused is kept in ``pl:rejected`` with its reason (of an over-size message, its first bytes,
size and digest), except when the journal itself is down (then the sender keeps it and retries:
that is what AR tells it). Each call returns an ``Outcome``: the ACK and what became of the
message, which the transport (``broker.listen``, ``broker.api.inbound``) answers with.

A resend is the same MSH-3, MSH-4 and MSH-10 received by the same adapter within the dedupe
window: it gets an AA for the same MSH-10 (MSA-2) and is not journalled again. The same three values from another
adapter are another hospital's message and are journalled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from broker import keys
from broker.ack import build_ack, should_acknowledge
from broker.adapters.spec import AdapterSpec
from broker.dispatch import DRAIN_INBOUND, AsyncKicker
from broker.envelope import new_id
from broker.errors import JournalError, MessageError, NoMappingError, RejectedError
from broker.identity import hl7v2_patient_key, unidentified_key
from broker.intake import offload
from broker.intake.journal import Journal, dedupe_digest
from broker.intake.outcome import Outcome, Verdict
from broker.log import get_logger
from broker.parsing.hl7v2 import Message, decode, parse

__all__ = ["HL7v2Intake", "partition_key"]

log = get_logger(__name__)
Supports = Callable[[str, str, str], bool]
"""Tells whether a mapping handles (event, version) from an adapter (site mappings count)."""


def partition_key(message: Message, adapter: AdapterSpec) -> str:
    """The patient identity that orders a message (``identity.hl7v2_patient_key``).

    The same ``system|value`` the mapped Patient is keyed and delivered by. A message without a
    patient is ordered on its own (its control id), so it waits for nobody.
    """
    found = hl7v2_patient_key(message, adapter.id, adapter.identifier_systems)
    return found or unidentified_key(adapter.id, message.control_id)


def _hd(value: tuple[str, str]) -> str:
    """An HD field for a refusal: its namespace ID, else its universal ID, quoted and cut short.

    Sender ids are system names, not patient data; the cut keeps the reason one short line.
    """
    return repr((value[0] or value[1])[:40])


def _check_whole(message: Message) -> None:
    body = message.text
    # One frame holds one message (MLLP release 2): a second MSH means two were glued together.
    if body.count("\rMSH" + message.delims.field) or body.count("\nMSH" + message.delims.field):
        raise RejectedError(
            "the frame holds more than one message; send one message per frame", location="MSH"
        )


def _read(payload: bytes, adapter: AdapterSpec) -> tuple[Message | None, MessageError | None, str]:
    """Decode and tokenize ``payload``: the message (if readable), why it is refused (if it
    is) and its patient partition key."""
    message: Message | None = None
    try:
        message = parse(decode(payload, adapter.charset))
        _check_whole(message)
    except MessageError as exc:
        return message, exc, ""
    return message, None, partition_key(message, adapter)


def _read_off_loop(
    payload: bytes, adapter: AdapterSpec
) -> tuple[str | None, MessageError | None, str]:
    """``_read`` in a pool process (``broker.intake.offload``): only the MSH segment's text
    comes back, not the whole message, so the loop neither unpickles nor frees it."""
    message, problem, key = _read(payload, adapter)
    if message is None:
        return None, problem, key
    fields = message.msh.fields
    return fields[0] + fields[1] + fields[1].join(fields[2:]), problem, key


class HL7v2Intake:
    """Turns one HL7 v2 message into an ACK, journalling it first.

    ``receive`` takes a message the transport read whole, ``oversize`` the first bytes of one
    over the size limit; both return the ``Outcome`` the transport answers with.

    Args:
        adapter: the inbound registration (id, charset).
        journal: where raw messages go.
        supports: tells whether a mapping exists for (event, version, adapter id).
        partitions: number of patient partitions.
        kicker: queues the drain task of the partition that received a message.
    """

    def __init__(
        self,
        adapter: AdapterSpec,
        journal: Journal,
        supports: Supports,
        partitions: int,
        kicker: AsyncKicker,
    ) -> None:
        self.adapter = adapter
        self.journal = journal
        self.supports = supports
        self.partitions = partitions
        self.kicker = kicker

    async def receive(self, payload: bytes, peer: str) -> Outcome:
        """Handle one message's bytes from ``peer``: journal them, or refuse them; the ACK."""
        started = time.perf_counter()
        if len(payload) <= offload.INLINE_BYTES:
            message, problem, key = _read(payload, self.adapter)
        else:
            header, problem, key = await offload.run(_read_off_loop, payload, self.adapter)
            message = parse(header) if header is not None else None
        if problem is None and message is not None:
            try:
                self._check(message)
            except MessageError as exc:
                problem = exc
        if problem is not None:
            verdict = Verdict.UNREADABLE if problem.ack_code == "AE" else Verdict.REFUSED
            return await self._refuse(payload, peer, message, problem, verdict)
        assert message is not None
        envelope_id = new_id()
        ack = self._ack("AA", message)
        partition = keys.partition_of(key, self.partitions)
        msh = message.msh
        fields = {
            "id": envelope_id,
            "source": self.adapter.id,
            "content_type": "application/hl7-v2",
            "received_at": datetime.now(UTC).isoformat(),
            "charset": self.adapter.charset,
            "raw": payload,
            "peer": peer,
            "ack": ack,  # what the sender is answered, for the message store
        }
        # MSH-3 and MSH-4 as sent (every HD component), so two senders sharing a namespace ID
        # but not a universal ID are not taken for one another.
        dedupe = dedupe_digest(msh.field(3), msh.field(4), message.control_id)
        try:
            result = await self.journal.append(partition, fields, dedupe=dedupe)
        except JournalError as exc:
            log.error(
                "message.journal_unavailable", adapter=self.adapter.id, peer=peer, error=str(exc)
            )
            return Outcome(
                Verdict.UNAVAILABLE, self._ack("AR", message, text=str(exc), error_code="207")
            )
        if result.duplicate:
            log.info(
                "message.duplicate",
                envelope_id=result.duplicate_of,
                adapter=self.adapter.id,
                control_id=message.control_id,
            )
            # Answered as the first was: AA (CA) with the same MSA-2; only this ACK's own MSH-7
            # and MSH-10 are new. A record from before the upgrade kept the first ACK itself.
            return Outcome(Verdict.DUPLICATE, result.legacy_reply or ack)
        if result.kick:
            # Journalled and flagged: the answer does not wait for Celery's publish (a failed
            # one is logged, and the periodic re-kick queues the drain within its period).
            self.kicker.dispatch_soon(DRAIN_INBOUND, [partition])
        log.info(
            "message.received",
            envelope_id=envelope_id,
            control_id=message.control_id,
            adapter=self.adapter.id,
            message_type=message.event,
            partition=partition,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return Outcome(Verdict.ACCEPTED, ack if self._wanted(message, accepted=True) else None)

    async def oversize(
        self, payload: bytes, peer: str, *, size: int, sha256: str | None
    ) -> Outcome:
        """Answer a message over the size limit with AR, read from its truncated MSH.

        Args:
            payload: its first bytes, as many as the limit allows (the limit is their length).
            peer: who sent it.
            size: the whole message's size in bytes.
            sha256: the hex SHA-256 of the whole message.

        Only the first bytes are kept in ``pl:rejected`` (``Journal.rejected_head_bytes``),
        with the whole payload's size and SHA-256 and a reason that says so.
        """
        message: Message | None = None
        try:
            message = parse(decode(payload.split(b"\r", 1)[0], self.adapter.charset))
        except MessageError:
            message = None
        msg = f"the message is {size} bytes, over the limit of {len(payload)} bytes"
        exc = RejectedError(msg, location="MSH")
        return await self._refuse(
            payload, peer, message, exc, Verdict.OVERSIZE, size=size, sha256=sha256
        )

    def _check(self, message: Message) -> None:
        """The checks that read only MSH (``_read`` made those that need the whole message)."""
        if self.adapter.senders is not None:
            self._check_sender(message)
        if not self.supports(message.event, message.version, self.adapter.id):
            msg = f"no mapping for {message.event} v{message.version or '?'} from adapter {self.adapter.id}"
            raise NoMappingError(msg, location="MSH-9")

    def _check_sender(self, message: Message) -> None:
        """Refuse a message whose MSH-3/MSH-4 is not one of the adapter's ``senders``."""
        senders = self.adapter.senders
        msh = message.msh
        application = (msh.value(3, 1), msh.value(3, 2))
        facility = (msh.value(4, 1), msh.value(4, 2))
        if senders is None or any(s.matches(application, facility) for s in senders):
            return
        known = any(s.application is None or s.application in application for s in senders)
        msg = (
            f"the sender {_hd(application)}/{_hd(facility)} (MSH-3/MSH-4) is not one adapter "
            f"{self.adapter.id} accepts; its registration's senders: list names who may send"
        )
        raise RejectedError(msg, location="MSH-4" if known else "MSH-3")

    def _ack(
        self,
        code: str,
        message: Message | None,
        *,
        text: str = "",
        error_code: str | None = None,
        error_location: str | None = None,
    ) -> bytes:
        """Build the answer; in enhanced mode the commit-level code (AA→CA, AE→CE, AR→CR)."""
        if self.adapter.ack_mode == "enhanced":
            code = "C" + code[1]
        ack = build_ack(
            code, message, text=text, error_code=error_code, error_location=error_location
        )
        try:
            return ack.encode(self.adapter.charset)
        except UnicodeEncodeError:
            return ack.encode("utf-8")

    def _wanted(self, message: Message | None, *, accepted: bool) -> bool:
        """In enhanced mode MSH-15 says whether a commit ACK is wanted; original: always."""
        if self.adapter.ack_mode != "enhanced" or message is None:
            return True
        return should_acknowledge(message.msh.value(15), accepted)

    async def _refuse(
        self,
        payload: bytes,
        peer: str,
        message: Message | None,
        exc: MessageError,
        verdict: Verdict,
        *,
        size: int | None = None,
        sha256: str | None = None,
    ) -> Outcome:
        """Keep refused input in ``pl:rejected`` and answer it; AR 207 when it cannot be kept."""
        code = exc.ack_code
        reason = str(exc)
        ack = self._ack(
            code, message, text=reason, error_code=exc.hl7_error_code, error_location=exc.location
        )
        try:
            await self.journal.reject(
                self.adapter.id,
                payload,
                reason,
                peer,
                size=size,
                sha256=sha256,
                ack=ack,
                code=code,
            )
        except JournalError as journal_exc:
            log.error("message.reject_not_kept", adapter=self.adapter.id, error=str(journal_exc))
            return Outcome(
                Verdict.UNAVAILABLE,
                self._ack("AR", message, text=str(journal_exc), error_code="207"),
            )
        log.warning(
            "message.rejected",
            adapter=self.adapter.id,
            peer=peer,
            ack_code=code,
            reason=reason,
            control_id=message.control_id if message else None,
        )
        return Outcome(verdict, ack if self._wanted(message, accepted=False) else None)
