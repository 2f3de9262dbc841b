"""What an intake did with one message: the verdict, and the answer the sender gets.

Both intakes (``hl7v2``, ``fhir``) return an ``Outcome``; the transport turns it into its own
answer (the MLLP listener frames ``reply``; the HTTP routes choose a status from ``verdict``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Outcome", "Verdict"]


class Verdict(enum.Enum):
    """What became of one message at the edge."""

    ACCEPTED = "accepted"
    """Journalled now; the reply acknowledges it (HL7 v2 AA, FHIR 202)."""
    DUPLICATE = "duplicate"
    """A resend within the dedupe window: the first reply again, nothing journalled."""
    UNREADABLE = "unreadable"
    """It cannot be read (HL7 v2 AE; FHIR not JSON, not a resource); kept in ``pl:rejected``."""
    REFUSED = "refused"
    """Read but refused (HL7 v2 AR; FHIR not valid R4); kept in ``pl:rejected``."""
    OVERSIZE = "oversize"
    """Over ``max_message_bytes``; its first bytes, size and digest kept in ``pl:rejected``."""
    UNAVAILABLE = "unavailable"
    """The journal could not take it (Redis down or full, backpressure): resend later."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an intake did with one message.

    Attributes:
        verdict: what became of it.
        reply: the answer to send (an ACK, an OperationOutcome); ``None`` when the sender asked
            for none (HL7 v2 enhanced mode, MSH-15).
    """

    verdict: Verdict
    reply: bytes | None
