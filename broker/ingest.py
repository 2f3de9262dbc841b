"""The inbound edge for HL7 v2: read the header, journal the bytes, then acknowledge.

Original acknowledgment mode (v2.5.1 §2.9.2): AA only once the raw bytes are in the journal;
AE when the message cannot be read at all; AR when no mapping handles its type and version, when
a frame holds two messages, or when the journal cannot accept it. Everything refused is kept in
``pl:rejected`` with its reason, except when the journal itself is down (then the sender keeps
it and retries: that is what AR tells it).
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
from broker.journal import Journal, dedupe_digest
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


class HL7v2Intake:
    """Turns one MLLP frame into an ACK, journalling it first. Callable as an MllpServer handler.

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

    async def __call__(self, payload: bytes, peer: str) -> bytes | None:
        """Handle one frame's payload from ``peer``; return the ACK to send (None: send none)."""
        started = time.perf_counter()
        message: Message | None = None
        try:
            message = parse(decode(payload, self.adapter.charset))
            self._check(message)
        except MessageError as exc:
            return await self._refuse(payload, peer, message, exc)
        envelope_id = new_id()
        ack = self._ack("AA", message)
        partition = keys.partition_of(partition_key(message, self.adapter), self.partitions)
        msh = message.msh
        fields = {
            "id": envelope_id,
            "source": self.adapter.id,
            "content_type": "application/hl7-v2",
            "received_at": datetime.now(UTC).isoformat(),
            "charset": self.adapter.charset,
            "raw": payload,
        }
        dedupe = dedupe_digest(msh.value(3), msh.value(4), message.control_id)
        try:
            result = await self.journal.append(partition, fields, dedupe=dedupe, ack=ack)
        except JournalError as exc:
            log.error(
                "message.journal_unavailable", adapter=self.adapter.id, peer=peer, error=str(exc)
            )
            return self._ack("AR", message, text=str(exc), error_code="207")
        if result.previous_ack is not None:
            log.info("message.duplicate", adapter=self.adapter.id, control_id=message.control_id)
            return result.previous_ack
        if result.kick:
            await self.kicker.dispatch(DRAIN_INBOUND, [partition])
        log.info(
            "message.received",
            envelope_id=envelope_id,
            control_id=message.control_id,
            adapter=self.adapter.id,
            message_type=message.event,
            partition=partition,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return ack if self._wanted(message, accepted=True) else None

    async def oversize(self, payload: bytes, peer: str) -> bytes | None:
        """Answer a frame over the size limit with AR; keep its first bytes with the reason."""
        message: Message | None = None
        try:
            message = parse(decode(payload.split(b"\r", 1)[0], self.adapter.charset))
        except MessageError:
            message = None
        limit = len(payload)
        exc = RejectedError(
            f"the message is larger than the limit of {limit} bytes", location="MSH"
        )
        return await self._refuse(payload, peer, message, exc)

    def _check(self, message: Message) -> None:
        body = message.text
        # One frame holds one message (MLLP release 2): a second MSH means two were glued together.
        if body.count("\rMSH" + message.delims.field) or body.count("\nMSH" + message.delims.field):
            raise RejectedError(
                "the frame holds more than one message; send one message per frame", location="MSH"
            )
        if not self.supports(message.event, message.version, self.adapter.id):
            msg = f"no mapping for {message.event} v{message.version or '?'} from adapter {self.adapter.id}"
            raise NoMappingError(msg, location="MSH-9")

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
        self, payload: bytes, peer: str, message: Message | None, exc: MessageError
    ) -> bytes | None:
        code = exc.ack_code
        reason = str(exc)
        ack = self._ack(
            code, message, text=reason, error_code=exc.hl7_error_code, error_location=exc.location
        )
        try:
            await self.journal.reject(self.adapter.id, payload, reason, peer)
        except JournalError as journal_exc:
            log.error("message.reject_not_kept", adapter=self.adapter.id, error=str(journal_exc))
            return self._ack("AR", message, text=str(journal_exc), error_code="207")
        log.warning(
            "message.rejected",
            adapter=self.adapter.id,
            peer=peer,
            ack_code=code,
            reason=reason,
            control_id=message.control_id if message else None,
        )
        return ack if self._wanted(message, accepted=False) else None
