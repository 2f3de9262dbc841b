"""What counts as a reason: the purpose an operator gives for reading content or editing a message.

A reason is recorded in the audit trail and read by an auditor; ``"."`` or ``"x"`` says nothing
(issue 10: an edit went out with why="."). So: at least ``MIN_LETTERS`` letters or digits, and
at most ``REASON_LIMIT`` characters; surrounding blanks are dropped.
"""

from __future__ import annotations

from broker.audit.events import REASON_LIMIT

__all__ = ["MIN_LETTERS", "ReasonError", "check_reason"]

MIN_LETTERS = 8
"""The fewest letters or digits a reason has (a ticket number with its prefix, a few words)."""


class ReasonError(ValueError):
    """Raised when a reason is blank, too short to say anything, or too long."""


def check_reason(reason: str) -> str:
    """``reason`` stripped, when it says something.

    Raises:
        ReasonError: blank, fewer than ``MIN_LETTERS`` letters or digits, or too long.
    """
    text = reason.strip()
    if not text:
        msg = "the reason is blank: say why (it is recorded in the audit trail)"
        raise ReasonError(msg)
    if sum(c.isalnum() for c in text) < MIN_LETTERS:
        msg = (
            f"the reason is too short to say anything (at least {MIN_LETTERS} letters or digits, "
            "e.g. a ticket number and a few words); it is recorded in the audit trail"
        )
        raise ReasonError(msg)
    if len(text) > REASON_LIMIT:
        msg = f"the reason is longer than {REASON_LIMIT} characters"
        raise ReasonError(msg)
    return text
