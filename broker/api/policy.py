"""Data-sharing policies and consent over HTTP: ``/api/consent`` and ``/api/policy/explain``.

Reading needs ``policy.read``, changing a consent ``policy.write`` (docs/security.md). A
change is recorded with who made it (``request.state.who``) and announced to the delivery
workers (``broker.policy.consent``). Errors are one sentence: 404 for an unknown consent,
message or subscriber, 422 for a refused change.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field

from broker.api.auth import Who, require
from broker.api.messages import get_store
from broker.api.operations import ID_PATTERN, SUBSCRIBER_PATTERN
from broker.errors import BrokerError
from broker.policy import ConsentError, ConsentLookup
from broker.store import ConsentRegistry

__all__ = ["router"]

router = APIRouter(tags=["policy"])
_READ = [Depends(require("policy.read"))]
_WRITE = [Depends(require("policy.write"))]


class NewConsent(BaseModel):
    """A consent to record."""

    system: str = Field(min_length=1, max_length=512, description="The identifier's system.")
    value: str = Field(min_length=1, max_length=256, description="The identifier's value.")
    action: Literal["block", "restrict"]
    reason: str = Field(min_length=1)
    subscriber: str | None = Field(None, pattern=SUBSCRIBER_PATTERN.pattern)
    valid_from: float | None = Field(None, description="Epoch seconds; default now.")
    valid_until: float | None = None


def _registry(request: Request, store: sa.Engine) -> ConsentRegistry:
    return ConsentRegistry(store, request.app.state.redis)


@router.get("/api/consent", dependencies=_READ)
def list_consents(
    request: Request,
    store: Annotated[sa.Engine, Depends(get_store)],
    system: str | None = None,
    value: str | None = None,
    subscriber: str | None = None,
    revoked: bool = False,
) -> list[dict[str, Any]]:
    """The consents (active ones unless ``revoked``), newest first."""
    found = _registry(request, store).list(
        system=system, value=value, subscriber=subscriber, revoked=revoked
    )
    return [c.public() for c in found]


@router.post("/api/consent", status_code=status.HTTP_201_CREATED, dependencies=_WRITE)
def add_consent(
    request: Request,
    body: NewConsent,
    who: Who,
    store: Annotated[sa.Engine, Depends(get_store)],
) -> dict[str, Any]:
    """Record a patient's block or restriction of sharing."""
    try:
        entry = _registry(request, store).add(who=who, **body.model_dump())
    except ConsentError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return entry.public()


@router.post("/api/consent/{consent_id}/revoke", dependencies=_WRITE)
def revoke_consent(
    request: Request,
    consent_id: Annotated[str, Path(pattern=ID_PATTERN.pattern)],
    who: Who,
    store: Annotated[sa.Engine, Depends(get_store)],
) -> dict[str, Any]:
    """Revoke a consent (kept, with who revoked it and when)."""
    try:
        return _registry(request, store).revoke(consent_id, who=who).public()
    except ConsentError as exc:
        code = status.HTTP_404_NOT_FOUND if "no consent" in str(exc) else status.HTTP_409_CONFLICT
        raise HTTPException(code, str(exc)) from exc


@router.get("/api/policy/explain", dependencies=_READ)
def explain_policy(
    request: Request,
    store: Annotated[sa.Engine, Depends(get_store)],
    message: Annotated[str, Query(pattern=ID_PATTERN.pattern)],
    subscriber: Annotated[str, Query(pattern=SUBSCRIBER_PATTERN.pattern)],
) -> dict[str, Any]:
    """Whether ``message`` would be sent to ``subscriber`` now, the payload, and why."""
    from broker import keys
    from broker.delivery.explain import explain
    from broker.envelope import Envelope
    from broker.store import stored_envelope

    config = getattr(request.app.state, "config", None)
    if config is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the configuration is not loaded")
    spec = config.adapters.get(subscriber)
    if spec is None or spec.direction != "outbound":
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no subscriber {subscriber!r}")
    client = request.app.state.redis
    raw = client.get(keys.envelope(message))
    envelope = Envelope.unsealed(raw, message) if raw is not None else None
    if envelope is None:
        envelope = stored_envelope(store, message)
    if envelope is None or envelope.bundle is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no stored message {message} to send")
    lookup = ConsentLookup(client, request.app.state.settings.effective_store_url)
    try:
        return explain(spec, envelope, lookup, config.watcher.current)
    except BrokerError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
