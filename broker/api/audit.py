"""Audit routes: list and filter the trail, verify its chain, export it (JSON or FHIR).

Permission ``audit.read`` (admin, auditor: docs/security.md); until the roles land every route
takes the API token, and names its permission in ``x-permission``. Verifying and exporting are
themselves recorded in the trail (``audit.verified``, ``audit.exported``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import redis
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request

from broker import audit
from broker.api.auth import Who, require
from broker.api.health import get_redis
from broker.api.messages import _epoch, audit_key, get_store
from broker.settings import Settings
from broker.store.auditlog import AuditQuery, entries
from broker.store.verify import verify

__all__ = ["PERMISSION", "router"]

PERMISSION = "audit.read"
MAX_PAGE = 1000
EXPORT_LIMIT = 100_000
"""The most entries one export answers (narrow ``since``/``until`` for more)."""

router = APIRouter(prefix="/api/audit", tags=["audit"], dependencies=[Depends(require(PERMISSION))])


Key = Annotated[bytes, Depends(audit_key)]
Store = Annotated[sa.Engine, Depends(get_store)]
Since = Annotated[str | None, Query(description="At or after (ISO 8601).")]
Until = Annotated[str | None, Query(description="Before (ISO 8601).")]


def _patient(key: bytes, value: str | None) -> str | None:
    return audit.patient_ref(key, value) if value else None


@router.get("")
def list_entries(
    store: Store,
    key: Key,
    since: Since = None,
    until: Until = None,
    actor: Annotated[str | None, Query(description="Who acted, exact.")] = None,
    action: Annotated[
        str | None, Query(description="An action (message.delivered) or a family (access.*).")
    ] = None,
    envelope: Annotated[str | None, Query(description="A message id.")] = None,
    subscriber: Annotated[str | None, Query(description="A subscriber.")] = None,
    patient: Annotated[
        str | None,
        Query(
            description="A patient identity `system|value`, or an identifier value alone (CIN): "
            "its keyed reference is looked for, never the value."
        ),
    ] = None,
    after: Annotated[int, Query(ge=0, description="The `next` cursor of a page.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> dict[str, Any]:
    """Entries matching every filter, oldest first: ``{"items": [...], "next": seq | null}``."""
    query = AuditQuery(
        since=_epoch(since, "since"),
        until=_epoch(until, "until"),
        actor=actor,
        action=action,
        envelope=envelope,
        subscriber=subscriber,
        patient=_patient(key, patient),
        after=after,
        limit=limit + 1,
    )
    found = entries(store, query)
    more = len(found) > limit
    found = found[:limit]
    return {"items": found, "next": found[-1]["seq"] if more else None}


@router.get("/verify")
def verify_chain(
    request: Request,
    store: Store,
    key: Key,
    client: Annotated[redis.Redis, Depends(get_redis)],
    who: Who,
) -> dict[str, Any]:
    """Walk the chain and check its head against the anchors; ``ok`` false names the first
    bad seq and why (altered, deleted, reordered, broken, truncated)."""
    settings: Settings = request.app.state.settings
    anchors = audit.read_anchors(client, settings.data_dir / audit.ANCHOR_FILE)
    verdict = verify(store, key, anchors)
    audit.record(
        client,
        "audit.verified",
        who=who,
        details={"ok": verdict.ok, "head": verdict.head_seq, "first_bad": verdict.first_bad},
    )
    return verdict.as_dict()


@router.get("/export")
def export(
    store: Store,
    client: Annotated[redis.Redis, Depends(get_redis)],
    who: Who,
    format_: Annotated[Literal["json", "fhir"], Query(alias="format")] = "json",
    since: Since = None,
    until: Until = None,
    why: Annotated[str, Query(description="Why it is exported; recorded in the trail.")] = "",
) -> Any:
    """The entries in the period: a JSON list, or a FHIR R4 Bundle of AuditEvent resources."""
    query = AuditQuery(
        since=_epoch(since, "since"), until=_epoch(until, "until"), limit=EXPORT_LIMIT
    )
    found = entries(store, query)
    audit.record(
        client,
        "audit.exported",
        who=who,
        why=why,
        details={
            "format": format_,
            "entries": len(found),
            "first": found[0]["seq"] if found else None,
            "last": found[-1]["seq"] if found else None,
        },
    )
    if format_ == "fhir":
        from broker.audit.fhir import bundle

        return bundle(found)
    return found
