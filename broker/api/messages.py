"""Message routes: search the message store, trace one message, read one envelope by id.

``GET /api/messages/{id}`` answers from Redis while the envelope is there (exactly as the
pipeline wrote it), then from the store (``X-Passerelle-Source: store``).

Search and trace need ``messages.read``; the bodies (the raw message and the canonical Bundle)
need ``messages.content`` and a ``reason`` (``broker.audit.reasons``): a trace read without
either has them replaced by a sentence saying why, and the whole envelope
(``GET /api/messages/{id}``) needs both. Every read is audited (``broker.audit``): a search as
``message.searched`` with the filters it used (an identifier's value as its keyed reference), a
trace as ``message.viewed``, a view of the content as ``content.viewed`` with its reason.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any

import redis
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import Response

from broker import audit, keys, sealing
from broker.api.auth import Caller, Who, require
from broker.api.content import SHOWN, ReasonQuery, given_reason, withheld
from broker.api.health import get_redis
from broker.errors import BrokerError
from broker.settings import Settings
from broker.store import MAX_LIMIT, Search, check_current, connect, search, trace

__all__ = ["WITHHELD", "WITHHELD_NO_PERMISSION", "audit_key", "router"]

router = APIRouter(prefix="/api/messages", tags=["messages"])

WITHHELD_NO_PERMISSION = "withheld: reading message bodies needs the permission messages.content"

_ENVELOPE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NOT_FOUND = "no message with this id (unknown, not stored yet, or purged)"
WITHHELD = withheld("the raw and canonical message")


def audit_key(request: Request) -> bytes:
    """FastAPI dependency: the audit key (loaded once); 503 when none is configured."""
    key: bytes | None = getattr(request.app.state, "audit_key", None)
    if key is None:
        settings: Settings = request.app.state.settings
        try:
            key = audit.load_key(settings)
        except BrokerError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        request.app.state.audit_key = key
    return key


def _key(request: Request) -> bytes | None:
    """The audit key for identifier references (``None`` without one: the value is left out)."""
    try:
        return audit_key(request)
    except HTTPException:
        return None


def get_store(request: Request) -> sa.Engine:
    """The message store's engine, opened on first use; 503 when its schema is not usable."""
    engine: sa.Engine | None = getattr(request.app.state, "store", None)
    if engine is None:
        try:
            engine = connect(request.app.state.settings.effective_store_url)
            check_current(engine)
        except BrokerError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        request.app.state.store = engine
    return engine


def _epoch(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        msg = f"{name} {value!r} is not an ISO 8601 time (2026-05-01T08:30:00+01:00)"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, msg) from None
    return moment.astimezone().timestamp() if moment.tzinfo is None else moment.timestamp()


@router.get("", dependencies=[Depends(require("messages.read"))])
def search_messages(
    request: Request,
    store: Annotated[sa.Engine, Depends(get_store)],
    client: Annotated[redis.Redis, Depends(get_redis)],
    who: Who,
    control_id: Annotated[str | None, Query(description="MSH-10, exact.")] = None,
    id: Annotated[str | None, Query(description="The envelope id.")] = None,
    patient: Annotated[str | None, Query(description="A patient identifier value.")] = None,
    kind: Annotated[str | None, Query(description="With patient: CIN, IPP…")] = None,
    adapter: Annotated[str | None, Query(description="The inbound adapter.")] = None,
    subscriber: Annotated[str | None, Query(description="A subscriber.")] = None,
    event: Annotated[str | None, Query(description="ADT^A01, ORU^R01…")] = None,
    state: Annotated[
        str | None, Query(description="A subscriber's state, or rejected / failed.")
    ] = None,
    since: Annotated[str | None, Query(description="Received from (ISO 8601).")] = None,
    until: Annotated[str | None, Query(description="Received before (ISO 8601).")] = None,
    text: Annotated[
        str | None, Query(description="Text in a reason or a receiver's reply.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    before: Annotated[str | None, Query(description="The `next` cursor of a page.")] = None,
) -> dict[str, Any]:
    """Messages matching every filter given, newest first: ``{"items": [...], "next": cursor}``."""
    query = Search(
        control_id=control_id,
        envelope_id=id,
        identifier=patient,
        identifier_kind=kind,
        adapter=adapter,
        subscriber=subscriber,
        event=event,
        state=state,
        since=_epoch(since, "since"),
        until=_epoch(until, "until"),
        text=text,
        limit=limit,
        before=before,
    )
    try:
        page = search(store, query)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    used = sorted(
        name
        for name, value in request.query_params.items()
        if value and name not in ("limit", "before", "patient")
    )
    key = _key(request) if patient else None
    audit.record(
        client,
        "message.searched",
        who=who,
        details={"filters": used, "results": len(page.items)},
        identifier=audit.patient_ref(key, patient) if key and patient else None,
    )
    return {"items": page.items, "next": page.next}


@router.get(
    "/{envelope_id}/trace",
    dependencies=[Depends(require("messages.read"))],
    responses={404: {"description": _NOT_FOUND}},
    openapi_extra={"x-permission-content": "messages.content"},
)
def trace_message(
    envelope_id: Annotated[str, Path(description="The message id.")],
    store: Annotated[sa.Engine, Depends(get_store)],
    client: Annotated[redis.Redis, Depends(get_redis)],
    who: Who,
    caller: Caller,
    reason: ReasonQuery = None,
) -> dict[str, Any]:
    """Where one message went: raw → canonical → every attempt per subscriber, and actions.

    The raw and canonical message only with ``messages.content`` and a ``reason`` (else
    ``null``, and ``content`` says why); the view is audited either way.
    """
    why = given_reason(reason)
    found = trace(store, envelope_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _NOT_FOUND)
    if not caller.may("messages.content"):
        why = None
        found["raw"] = found["canonical"] = found["edit"] = None
        found["content"] = found["withheld"] = WITHHELD_NO_PERMISSION
    elif why is None:
        found["raw"] = found["canonical"] = found["edit"] = None
        found["content"] = WITHHELD
    else:
        found["content"] = SHOWN
    audit.viewed(client, who=who, why=why, view="trace", envelope=envelope_id)
    return found


@router.get(
    "/{envelope_id}",
    dependencies=[Depends(require("messages.content"))],
    responses={
        200: {"description": "The Envelope as JSON", "content": {"application/json": {}}},
        404: {"description": _NOT_FOUND},
        422: {"description": "No reason, or one too short to say anything"},
    },
)
def get_message(
    request: Request,
    envelope_id: Annotated[str, Path(description="The envelope id (28 hex digits).")],
    client: Annotated[redis.Redis, Depends(get_redis)],
    who: Who,
    reason: ReasonQuery = None,
) -> Response:
    """The Envelope stored at ``pl:env:<id>``; once it left Redis, the store's record of it.

    It holds the canonical message: a ``reason`` is required, and the view is audited with it.
    """
    why = given_reason(reason)
    if why is None:
        msg = "this route returns the message's content: give a reason (`reason=`); it is audited"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, msg)
    # Ids are checked before they reach a Redis key, so no pattern or other key can be named.
    if not _ENVELOPE_ID.match(envelope_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, _NOT_FOUND)
    audit.record(
        client,
        "content.viewed",
        who=who,
        why=why,
        details={"view": "envelope"},
        envelope=envelope_id,
    )
    raw = client.get(keys.envelope(envelope_id))
    if raw is not None:
        return Response(
            content=sealing.open(raw, envelope_id, "env"), media_type="application/json"
        )
    try:
        store = get_store(request)
    except HTTPException:
        store = None  # no store (yet): as unknown as an expired envelope always was
    found = trace(store, envelope_id) if store is not None else None
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _NOT_FOUND)
    found.pop("raw", None)
    found["bundle"] = found.pop("canonical")
    return Response(
        content=json.dumps(found, ensure_ascii=False),
        media_type="application/json",
        headers={"X-Passerelle-Source": "store"},
    )
