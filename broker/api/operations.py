"""Operator actions over HTTP: the shared ``Operations`` dependency and ``POST .../resend``.

Every action is recorded with who acted (``broker.api.auth.Who``). Errors are one
sentence: 404 for what does not exist, 409 for an action the current state refuses, 422 with a
FHIR OperationOutcome for a corrected Bundle that is not valid FHIR R4.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from broker.api.auth import Who, require
from broker.delivery.replay import MessageNotFound, OperationError, Operations
from broker.errors import BrokerError, CanonicalError
from broker.settings import Settings
from broker.store import StoredEnvelopes

__all__ = [
    "ID_PATTERN",
    "SUBSCRIBER_PATTERN",
    "get_operations",
    "operation_outcome",
    "router",
]

SUBSCRIBER_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
"""An adapter id (as ``AdapterSpec.id``); checked before it becomes part of a Redis key."""
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""An envelope or dead-letter id; checked before it becomes part of a Redis key."""

router = APIRouter(
    prefix="/api/messages", tags=["operations"], dependencies=[Depends(require("messages.replay"))]
)


def get_operations(request: Request) -> Operations:
    """FastAPI dependency: the application's ``Operations``, built once on first use.

    Tasks are queued with Celery on the broker's Redis; the subscribers are the outbound adapters
    registered in ``settings.adapters_dir``. Tests override this dependency.

    Raises:
        HTTPException: 503 when the adapter registrations cannot be loaded.
    """
    ops: Operations | None = getattr(request.app.state, "operations", None)
    if ops is not None:
        return ops
    from broker.adapters.spec import load_adapters
    from broker.dispatch import publish
    from broker.worker.celery_app import create_celery

    settings: Settings = request.app.state.settings
    try:
        adapters = load_adapters(settings.adapters_dir)
    except BrokerError as exc:
        msg = f"adapter registrations cannot be loaded: {exc}".splitlines()[0]
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, msg) from exc
    celery = create_celery(settings)

    def enqueue(name: str, args: list[Any]) -> None:
        publish(celery, name, args)

    ops = Operations(
        request.app.state.redis,
        enqueue=enqueue,
        subscribers=[a.id for a in adapters if a.direction == "outbound"],
        retention_s=settings.retention_s,
        stored=StoredEnvelopes(settings.effective_store_url),
    )
    request.app.state.operations = ops
    return ops


Ops = Annotated[Operations, Depends(get_operations)]


def operation_outcome(exc: CanonicalError) -> JSONResponse:
    """A 422 whose body is a FHIR OperationOutcome naming what is invalid (never a value)."""
    issue: dict[str, Any] = {
        "severity": "error",
        "code": "invalid",
        "diagnostics": str(exc),
    }
    if exc.location:
        issue["expression"] = [exc.location]
    body = {"resourceType": "OperationOutcome", "issue": [issue]}
    return JSONResponse(body, status_code=422, media_type="application/fhir+json")


def refused(exc: OperationError) -> HTTPException:
    """An action the current state refuses (not open, nothing kept to send): 409."""
    return HTTPException(status.HTTP_409_CONFLICT, str(exc))


def require_subscriber(ops: Operations, subscriber: str) -> None:
    """404 unless ``subscriber`` is a registered outbound adapter."""
    if subscriber not in ops.subscribers:
        msg = f"no outbound adapter {subscriber!r}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, msg)


class ResendBody(BaseModel):
    """What ``POST /api/messages/{id}/resend`` needs."""

    model_config = {"extra": "forbid"}

    to: str = Field(description="The outbound adapter (subscriber) to send the message to.")
    why: str = Field(description="Why it is sent again; recorded in the audit trail.")

    @field_validator("why")
    @classmethod
    def _said(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("why must say why (it is recorded in the audit trail)")
        return value.strip()


@router.post(
    "/{envelope_id}/resend",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        404: {"description": "Unknown subscriber, or no stored message with this id"},
        409: {"description": "The message has no canonical form to send"},
    },
)
def resend(
    envelope_id: Annotated[str, Path(description="The envelope id of a journalled message.")],
    body: ResendBody,
    ops: Ops,
    who: Who,
) -> dict[str, Any]:
    """Queue any stored message for a subscriber again; recorded as ``resent`` in the audit."""
    require_subscriber(ops, body.to)
    if not ID_PATTERN.match(envelope_id):
        msg = f"no stored message {envelope_id} (unknown, or older than the retention)"
        raise HTTPException(status.HTTP_404_NOT_FOUND, msg)
    try:
        ops.resend(envelope_id, body.to, who=who, why=body.why)
    except MessageNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except OperationError as exc:
        raise refused(exc) from exc
    return {"envelope_id": envelope_id, "to": body.to, "status": "queued"}
