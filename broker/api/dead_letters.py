"""Dead-letter routes: list, read, replay (as it was or corrected), discard and bulk replay.

Listings are summaries without the patient identifier or the payload (``messages.read``).
Reading one dead letter needs ``messages.content``: without a ``reason`` (``broker.api.content``)
it answers the record with its envelope and patient ``null`` (audited as ``message.viewed``),
with one the whole record (audited as ``content.viewed`` with the reason). Replaying and
discarding need ``messages.replay``; a replay with a corrected Bundle needs ``messages.edit`` too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from broker.api.auth import Caller, Who, lacking, require
from broker.api.content import SHOWN, ReasonQuery, given_reason, withheld
from broker.api.operations import (
    ID_PATTERN,
    SUBSCRIBER_PATTERN,
    Ops,
    operation_outcome,
    refused,
    require_subscriber,
)
from broker.audit.reasons import ReasonError, check_reason
from broker.delivery.dead_letter import Status
from broker.delivery.replay import IdentityEditRefused, OperationError, Operations
from broker.errors import CanonicalError
from broker.ops.overview import dead_letter_counts

__all__ = ["CONTENT_FIELDS", "REPLY_CHARS", "WITHHELD", "detail", "router", "summary"]

REPLY_CHARS = 200
"""A summary's last reply is cut to this many characters."""

CONTENT_FIELDS = ("envelope", "patient")
"""What a dead letter holds of the patient: the envelope (canonical Bundle) and the patient key."""
WITHHELD = withheld("the envelope (the canonical Bundle) and the patient")

router = APIRouter(prefix="/api/dead-letters", tags=["dead letters"])
_READ = [Depends(require("messages.read"))]
_REPLAY = [Depends(require("messages.replay"))]

SubscriberPath = Annotated[str, Path(description="The outbound adapter's id.")]
DeadIdPath = Annotated[str, Path(description="The dead letter's id.")]


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """What a listing shows of a dead letter: no patient identifier, no payload."""
    attempts: list[dict[str, Any]] = record.get("attempts") or []
    last = attempts[-1] if attempts else {}
    reply = last.get("reply") if last.get("reply") is not None else last.get("error")
    if reply is not None and not isinstance(reply, str):
        reply = json.dumps(reply, ensure_ascii=False)
    if reply is not None and len(reply) > REPLY_CHARS:
        reply = reply[: REPLY_CHARS - 1] + "…"
    return {
        "id": record["id"],
        "subscriber": record["subscriber"],
        "envelope_id": record["envelope_id"],
        "reason": record["reason"],
        "status": record["status"],
        "attempts": len(attempts),
        "last_reply": reply,
        "dead_lettered_at": record["dead_lettered_at"],
        "holds_patient": record["holds_patient"],
    }


def detail(record: dict[str, Any], *, shown: bool, how: str = WITHHELD) -> dict[str, Any]:
    """One dead letter as a view shows it: the record, plus its message's adapter, event and
    control id (metadata, as a trace shows them); without ``shown`` its ``CONTENT_FIELDS`` are
    ``None`` and ``content`` says how to see them (``how``)."""
    envelope = record.get("envelope") or {}
    out = {
        **record,
        "adapter": envelope.get("source"),
        "event": envelope.get("event"),
        "control_id": envelope.get("control_id") or envelope.get("correlation_id"),
        "content": SHOWN if shown else how,
    }
    if not shown:
        out.update(dict.fromkeys(CONTENT_FIELDS))
    return out


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _known(ops: Operations, subscriber: str) -> None:
    """404 unless the subscriber is registered or still has dead letters."""
    if SUBSCRIBER_PATTERN.match(subscriber) and (
        subscriber in ops.subscribers or subscriber in ops.store.subscribers()
    ):
        return
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no subscriber {subscriber!r}")


def _record(ops: Operations, subscriber: str, dead_id: str) -> dict[str, Any]:
    record = (
        ops.store.get(subscriber, dead_id)
        if SUBSCRIBER_PATTERN.match(subscriber) and ID_PATTERN.match(dead_id)
        else None
    )
    if record is None:
        msg = f"no dead letter {dead_id} for subscriber {subscriber}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, msg)
    return record


class _Why(BaseModel):
    model_config = {"extra": "forbid"}

    why: str = Field(description="Why; recorded with the action in the audit trail.")

    @field_validator("why")
    @classmethod
    def _said(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("why must say why (it is recorded in the audit trail)")
        return value.strip()


class ReplayBody(_Why):
    """``POST .../{id}/replay``: why, and optionally the corrected canonical message."""

    corrected_bundle: dict[str, Any] | None = Field(
        None,
        description="A corrected FHIR R4 message Bundle: taken in as a NEW message linked to the "
        "original (which is kept), checked as any mapped message; needs a real reason "
        "(at least 8 letters or digits) and, when it changes the patient's identifiers, "
        "the identity.edit permission.",
    )


class DiscardBody(_Why):
    """``POST .../{id}/discard``: why the dead letter is given up."""


class BulkReplayBody(_Why):
    """``POST /api/dead-letters/{subscriber}/replay``: which open dead letters to replay."""

    since: datetime | None = Field(None, description="Dead-lettered at or after (ISO 8601).")
    until: datetime | None = Field(None, description="Dead-lettered at or before (ISO 8601).")
    text: str | None = Field(None, description="Text in the reason or a reply (any case).")


@router.get("", dependencies=_READ)
def subscribers(ops: Ops) -> list[dict[str, Any]]:
    """Subscribers that have dead letters, with how many are open and in all."""
    out = []
    for subscriber in ops.store.subscribers():
        opened, total = dead_letter_counts(ops.store.client, subscriber)
        out.append({"subscriber": subscriber, "open": opened, "total": total})
    return out


@router.get(
    "/{subscriber}", dependencies=_READ, responses={404: {"description": "Unknown subscriber"}}
)
def list_dead_letters(
    subscriber: SubscriberPath,
    ops: Ops,
    status_: Annotated[
        Literal["open", "replaying", "delivered", "discarded", "edited", "all"],
        Query(alias="status"),
    ] = "open",
    since: Annotated[datetime | None, Query(description="ISO 8601; naive means UTC.")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; naive means UTC.")] = None,
    text: Annotated[str | None, Query(description="Text in the reason or a reply.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """One subscriber's dead letters, newest first, as summaries without patient data."""
    _known(ops, subscriber)
    chosen: Status | None = None if status_ == "all" else status_
    records = ops.store.find(
        subscriber,
        status=chosen,
        since=_epoch(since),
        until=_epoch(until),
        text=text or None,
        limit=limit,
    )
    return [summary(r) for r in records]


@router.get(
    "/{subscriber}/{dead_id}",
    dependencies=[Depends(require("messages.content"))],
    responses={
        404: {"description": "Unknown dead letter"},
        422: {"description": "A reason too short to say anything"},
    },
)
def show_dead_letter(
    subscriber: SubscriberPath,
    dead_id: DeadIdPath,
    ops: Ops,
    who: Who,
    reason: ReasonQuery = None,
) -> dict[str, Any]:
    """One dead letter: its attempts, status and history; its envelope and patient only with a
    ``reason`` (else ``null``, and ``content`` says why). The view is audited either way."""
    why = given_reason(reason)
    record = _record(ops, subscriber, dead_id)
    ops.store.viewed(record, who=who, why=why)
    return detail(record, shown=why is not None)


@router.post(
    "/{subscriber}/{dead_id}/replay",
    dependencies=_REPLAY,
    status_code=status.HTTP_202_ACCEPTED,
    response_model=None,
    responses={
        403: {
            "description": "A corrected Bundle without the permission messages.edit, or an edit "
            "that changes the patient's identifiers without identity.edit"
        },
        404: {"description": "Unknown subscriber or dead letter"},
        409: {"description": "The dead letter is not open, or nothing is kept to send"},
        422: {
            "description": "The corrected Bundle is not valid FHIR R4 or fails the checks (an "
            "OperationOutcome), or an edit's reason says nothing"
        },
    },
    openapi_extra={
        "x-permission-edit": "messages.edit",
        "x-permission-identity": "identity.edit",
    },
)
def replay(
    subscriber: SubscriberPath,
    dead_id: DeadIdPath,
    body: ReplayBody,
    ops: Ops,
    who: Who,
    caller: Caller,
) -> dict[str, Any] | JSONResponse:
    """Send a dead letter again as it was, or an edited copy (``messages.edit``) as a new
    message linked to it; a held patient is then released."""
    if body.corrected_bundle is not None and not caller.may("messages.edit"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, lacking(caller, "messages.edit"))
    require_subscriber(ops, subscriber)
    _record(ops, subscriber, dead_id)
    if body.corrected_bundle is not None:
        try:
            check_reason(body.why)
        except ReasonError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    try:
        return ops.replay(
            subscriber,
            dead_id,
            who=who,
            why=body.why,
            corrected=body.corrected_bundle,
            identity_edit=caller.may("identity.edit"),
        )
    except CanonicalError as exc:
        return operation_outcome(exc)
    except IdentityEditRefused as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
    except OperationError as exc:
        raise refused(exc) from exc


@router.post(
    "/{subscriber}/{dead_id}/discard",
    dependencies=_REPLAY,
    responses={
        404: {"description": "Unknown subscriber or dead letter"},
        409: {"description": "The dead letter is not open"},
    },
)
def discard(
    subscriber: SubscriberPath, dead_id: DeadIdPath, body: DiscardBody, ops: Ops, who: Who
) -> dict[str, Any]:
    """Give a dead letter up for good; a held patient's later messages are then delivered."""
    require_subscriber(ops, subscriber)
    _record(ops, subscriber, dead_id)
    try:
        return ops.discard(subscriber, dead_id, who=who, why=body.why)
    except OperationError as exc:
        raise refused(exc) from exc


@router.post(
    "/{subscriber}/replay",
    dependencies=_REPLAY,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        404: {"description": "Unknown subscriber"},
        409: {"description": "One of the matching dead letters could not be replayed"},
    },
)
def replay_matching(
    subscriber: SubscriberPath, body: BulkReplayBody, ops: Ops, who: Who
) -> dict[str, Any]:
    """Replay every open dead letter of the subscriber that matches the filter."""
    require_subscriber(ops, subscriber)
    try:
        ids, failed = ops.replay_matching(
            subscriber,
            who=who,
            why=body.why,
            since=_epoch(body.since),
            until=_epoch(body.until),
            text=body.text or None,
        )
    except OperationError as exc:
        raise refused(exc) from exc
    return {"subscriber": subscriber, "replayed": ids, "count": len(ids), "not_replayed": failed}
