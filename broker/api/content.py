"""Views of patient content: the reason they need, and what an answer says without one.

Issue 10: content (a raw message, a canonical Bundle, a dead letter's envelope, refused bytes)
is read only with a purpose, recorded in the audit trail. Every route that can show content
takes the same ``reason`` query parameter, checked by ``broker.audit.reasons``: without it the
route answers the metadata, the content fields ``null`` and ``content`` saying how to see them
(``withheld``); with a real one, the content and ``content: "shown"``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Query, status

from broker.audit.reasons import ReasonError, check_reason

__all__ = ["SHOWN", "ReasonQuery", "given_reason", "withheld"]

SHOWN = "shown"
"""``content`` of an answer that holds the content."""

ReasonQuery = Annotated[
    str | None,
    Query(description="Why the content is read; required to see it, recorded in the audit trail."),
]


def given_reason(reason: str | None) -> str | None:
    """The reason given, checked; ``None`` when none was given.

    Raises:
        HTTPException: 422 with the reason's problem when it is blank, too short or too long.
    """
    if reason is None:
        return None
    try:
        return check_reason(reason)
    except ReasonError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


def withheld(what: str) -> str:
    """``content`` of an answer without its content: what was left out and how to see it."""
    return f"withheld: give a reason (`reason=`) to see {what}; it is audited"
