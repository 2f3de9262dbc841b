"""Reading the audit trail: filter entries, oldest first, by seq; what the CLI and API call."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from broker.store.schema import audit

__all__ = ["AuditQuery", "entries", "entry_dict"]


@dataclass(frozen=True)
class AuditQuery:
    """Which entries; every filter given must match.

    Attributes:
        since: at or after (epoch seconds).
        until: before (epoch seconds).
        actor: who acted (exact).
        action: the action (exact), or a family with a trailing ``*`` (``access.*``).
        envelope: a message id among the targets.
        subscriber: a subscriber among the targets.
        patient: a patient reference (``broker.audit.patient_ref``, of an identity
            ``system|value`` or of an identifier value alone) among the targets.
        after: only entries after this seq (the cursor of the next page).
        limit: at most this many (``None``: all).
    """

    since: float | None = None
    until: float | None = None
    actor: str | None = None
    action: str | None = None
    envelope: str | None = None
    subscriber: str | None = None
    patient: str | None = None
    after: int = 0
    limit: int | None = 100


def entry_dict(row: Any) -> dict[str, Any]:
    """A stored entry, JSON-ready: targets and details as objects, ``at`` as epoch seconds,
    ``time`` as ISO 8601 UTC."""
    entry = dict(row._mapping)
    entry["targets"] = json.loads(entry["targets"])
    entry["details"] = json.loads(entry["details"])
    entry["time"] = datetime.fromtimestamp(entry["at"], UTC).isoformat()
    return entry


def _target(name: str, value: str) -> sa.ColumnElement[bool]:
    """Targets are canonical JSON (sorted keys, no spaces): a key and value appear as is."""
    return audit.c.targets.contains(json.dumps({name: value})[1:-1], autoescape=True)


def entries(engine: sa.Engine, query: AuditQuery) -> list[dict[str, Any]]:
    """The entries matching ``query``, oldest first."""
    where: list[sa.ColumnElement[bool]] = [audit.c.seq > query.after]
    if query.since is not None:
        where.append(audit.c.at >= query.since)
    if query.until is not None:
        where.append(audit.c.at < query.until)
    if query.actor:
        where.append(audit.c.actor == query.actor)
    if query.action:
        if query.action.endswith("*"):
            where.append(audit.c.action.startswith(query.action[:-1], autoescape=True))
        else:
            where.append(audit.c.action == query.action)
    for name in ("envelope", "subscriber"):
        value = getattr(query, name)
        if value:
            where.append(_target(name, value))
    if query.patient:  # the identity's, an identifier's or a search's: a ref is unique enough
        where.append(audit.c.targets.contains(f'"{query.patient}"', autoescape=True))
    statement = sa.select(audit).where(*where).order_by(audit.c.seq)
    if query.limit is not None:
        statement = statement.limit(query.limit)
    with engine.connect() as connection:
        return [entry_dict(row) for row in connection.execute(statement)]
