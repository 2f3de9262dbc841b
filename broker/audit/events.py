"""Audit events, as any process sends them: one ``aud`` record on ``pl:store``.

The chain has one owner, the store's writer, so every other process (API, CLI, workers, the
console) tells it what happened through the stream it already feeds, on the pipeline it already
sends where there is one: the record exists exactly when what it tells was committed, and the
writer appends it to the chain in order with everything else of its batch. Records carry ids,
digests and reasons, never a message's content or a patient's identifier (``patient_ref``).

Record (field → value)::

    k=aud  act=ACTION  who=WHO  why=REASON  at=EPOCH  t={"envelope": ID, ...}  d={...}

Usage::

    events.record(pipe, "message.replayed", who=who, why=why, envelope=envelope_id,
                  subscriber=subscriber, dead_letter=dead_id)
"""

from __future__ import annotations

import time
from typing import Any

from broker import keys
from broker.audit.chain import dumps

__all__ = ["ACTIONS", "PRUNED", "REASON_LIMIT", "record", "viewed"]

REASON_LIMIT = 2000
"""A reason is kept up to this many characters."""
PRUNED = "audit.pruned"
"""The action of the entry a prune appends before it removes entries (``broker.store.pruning``)."""

ACTIONS = {
    "message.delivered": "a subscriber received a message (a disclosure)",
    "message.searched": "messages were searched (filters named, identifier values as refs)",
    "message.viewed": "a message's metadata and path were read (no content)",
    "content.viewed": "a message's content was read (raw, canonical, dead letter, refusal)",
    "message.replayed": "a dead letter was sent again",
    "message.edited": "an edited copy of a message was taken in as a new message",
    "message.discarded": "a dead letter was given up",
    "message.resent": "a stored message was queued for a subscriber again",
    "mappings.reloaded": "a changed set of mapping files now serves",
    "mappings.rejected": "a changed set of mapping files was refused",
    "registrations.changed": "adapter registrations were added, changed or removed",
    "audit.verified": "the chain was verified",
    "audit.exported": "the trail was exported",
    PRUNED: "the trail's oldest entries, past its retention, were removed (this entry vouches)",
}
"""The actions the broker records, and what each means (``access.*`` come from
``broker.access_events``: logins, tokens)."""


def record(
    pipe: Any,
    action: str,
    *,
    who: str,
    why: str = "",
    details: dict[str, Any] | None = None,
    at: float | None = None,
    **targets: Any,
) -> None:
    """Queue one audit event for the chain's writer.

    Args:
        pipe: a MULTI pipeline of the action it tells (or a client: the event alone).
        action: what happened (``ACTIONS``, or ``access.*``).
        who: the person, token or process that acted.
        why: the reason or purpose given.
        details: ids and digests only, never content or identifiers.
        at: when (epoch seconds); now by default.
        targets: what it was done to: ``envelope``, ``subscriber``, ``dead_letter``,
            ``patient`` (a ``patient_ref``), ``policy``… (``None`` values are left out).
    """
    fields = {
        "k": "aud",
        "act": action,
        "who": who or "?",
        "why": (why or "")[:REASON_LIMIT],
        "at": repr(time.time() if at is None else at),
        "t": dumps({k: str(v) for k, v in targets.items() if v is not None}),
        "d": dumps(details or {}),
    }
    pipe.xadd(keys.STORE, fields)


def viewed(pipe: Any, *, who: str, why: str | None, view: str, **targets: Any) -> None:
    """Queue the event of one view of a message or a record (``view``: ``trace``,
    ``dead_letter``, ``rejected``): ``content.viewed`` with the reason when its content was
    shown, ``message.viewed`` when it was withheld for want of one (``why`` is ``None``)."""
    record(
        pipe,
        "content.viewed" if why else "message.viewed",
        who=who,
        why=why or "",
        details={"view": view},
        **targets,
    )
