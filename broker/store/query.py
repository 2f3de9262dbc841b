"""Reading the store: search messages, show one, trace one; what the CLI and the API both call.

Results are plain JSON-ready dicts, newest first, paginated by a cursor (``next`` of a page is
the ``before`` of the following one). Times are ISO 8601 in UTC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from broker import sealing
from broker.envelope import Envelope
from broker.errors import ServiceUnavailable
from broker.store.schema import actions, attempts, deliveries, identifiers, messages

__all__ = [
    "MAX_LIMIT",
    "Page",
    "Search",
    "StoredEnvelopes",
    "search",
    "show",
    "stored_bundle",
    "stored_envelope",
    "trace",
]

MAX_LIMIT = 500
"""The most messages one page holds."""

_SUMMARY = [
    messages.c.id,
    messages.c.received_at,
    messages.c.adapter,
    messages.c.peer,
    messages.c.control_id,
    messages.c.sender,
    messages.c.event,
    messages.c.version,
    messages.c.state,
    messages.c.reason,
    messages.c.ack_code,
]


@dataclass(frozen=True)
class Search:
    """What to look for; every filter given must match.

    Attributes:
        control_id: MSH-10 (exact).
        envelope_id: the envelope id (exact).
        identifier: a patient identifier value (CIN, IPP…; exact).
        identifier_kind: with ``identifier``, only this kind (``CIN``, ``IPP``).
        adapter: the inbound adapter.
        subscriber: a subscriber the message was routed to (or filtered out for).
        event: the event, ``ADT^A01``.
        state: a subscriber's state of the message (``delivered``, ``dead_lettered``…; with
            ``subscriber``, that subscriber's), or the message's own (``rejected``, ``failed``).
        since: received at or after (epoch seconds).
        until: received before (epoch seconds).
        text: in the message's or a subscriber's reason, or in what a receiver answered an
            attempt (its ACK text or HTTP body, or the error), case-insensitive: what
            ``GET /api/dead-letters/{subscriber}?text=`` looks in.
        limit: messages per page (at most ``MAX_LIMIT``).
        before: the cursor of the next page (``Page.next``).
    """

    control_id: str | None = None
    envelope_id: str | None = None
    identifier: str | None = None
    identifier_kind: str | None = None
    adapter: str | None = None
    subscriber: str | None = None
    event: str | None = None
    state: str | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None
    limit: int = 50
    before: str | None = None


@dataclass(frozen=True)
class Page:
    """One page of a search: the messages and the cursor of the next page (None: the last)."""

    items: list[dict[str, Any]]
    next: str | None


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch is not None else None


def _cursor(row: Any) -> str:
    return f"{row.received_at!r}~{row.id}"


def _where(query: Search) -> list[sa.ColumnElement[bool]]:
    m, d, a = messages.c, deliveries.c, attempts.c
    where: list[sa.ColumnElement[bool]] = []
    if query.control_id is not None:
        where.append(m.control_id == query.control_id)
    if query.envelope_id is not None:
        where.append(m.id == query.envelope_id)
    if query.adapter is not None:
        where.append(m.adapter == query.adapter)
    if query.event is not None:
        where.append(m.event == query.event)
    if query.since is not None:
        where.append(m.received_at >= query.since)
    if query.until is not None:
        where.append(m.received_at < query.until)
    if query.identifier is not None:
        match = [identifiers.c.message_id == m.id, identifiers.c.value == query.identifier]
        if query.identifier_kind is not None:
            match.append(identifiers.c.kind == query.identifier_kind.upper())
        where.append(sa.exists().where(*match))
    if query.subscriber is not None or query.state is not None:
        match = [d.message_id == m.id]
        if query.subscriber is not None:
            match.append(d.subscriber == query.subscriber)
        if query.state is not None:
            match.append(d.state == query.state)
        routed = sa.exists().where(*match)
        if query.state is not None and query.subscriber is None:
            where.append(sa.or_(m.state == query.state, routed))
        else:
            where.append(routed)
    if query.text:
        text = query.text
        in_delivery = sa.exists().where(
            d.message_id == m.id, d.reason.icontains(text, autoescape=True)
        )
        in_reply = sa.exists().where(
            a.message_id == m.id,
            sa.or_(
                a.reply.icontains(text, autoescape=True), a.error.icontains(text, autoescape=True)
            ),
        )
        where.append(sa.or_(m.reason.icontains(text, autoescape=True), in_delivery, in_reply))
    if query.before:
        at, _, last_id = query.before.partition("~")
        try:
            received = float(at)
        except ValueError:
            msg = f"the cursor {query.before!r} is not one a page returned"
            raise ValueError(msg) from None
        where.append(
            sa.or_(m.received_at < received, sa.and_(m.received_at == received, m.id < last_id))
        )
    return where


def _deliveries(connection: sa.Connection, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return found
    rows = connection.execute(
        sa.select(deliveries)
        .where(deliveries.c.message_id.in_(ids))
        .order_by(deliveries.c.subscriber)
    )
    for row in rows:
        found[row.message_id].append(
            {
                "subscriber": row.subscriber,
                "state": row.state,
                "reason": row.reason,
                "attempts": row.attempts,
                "dead_letter": row.dead_letter,
                "updated_at": _iso(row.updated_at),
            }
        )
    return found


def _summary(row: Any, delivered: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": row.id,
        "received_at": _iso(row.received_at),
        "adapter": row.adapter,
        "peer": row.peer,
        "control_id": row.control_id,
        "sender": row.sender,
        "event": row.event,
        "version": row.version,
        "state": row.state,
        "reason": row.reason,
        "ack_code": row.ack_code,
        "deliveries": delivered,
    }


def search(engine: sa.Engine, query: Search) -> Page:
    """Messages matching ``query``, newest first, one page.

    Raises:
        ValueError: ``before`` is not a cursor a page returned.
    """
    limit = max(1, min(query.limit, MAX_LIMIT))
    statement = (
        sa.select(*_SUMMARY)
        .where(*_where(query))
        .order_by(messages.c.received_at.desc(), messages.c.id.desc())
        .limit(limit + 1)
    )
    with engine.connect() as connection:
        rows = list(connection.execute(statement))
        more = len(rows) > limit
        rows = rows[:limit]
        found = _deliveries(connection, [r.id for r in rows])
    items = [_summary(r, found[r.id]) for r in rows]
    return Page(items, _cursor(rows[-1]) if more and rows else None)


def show(engine: sa.Engine, message_id: str) -> dict[str, Any] | None:
    """One message: its summary, patient identifiers, mappings, findings and unmapped fields."""
    with engine.connect() as connection:
        row = connection.execute(sa.select(messages).where(messages.c.id == message_id)).first()
        if row is None:
            return None
        found = _deliveries(connection, [row.id])
        ids = connection.execute(
            sa.select(identifiers.c.kind, identifiers.c.system, identifiers.c.value)
            .where(identifiers.c.message_id == row.id)
            .order_by(identifiers.c.kind, identifiers.c.value)
        )
        result = _summary(row, found[row.id])
        result["identifiers"] = [dict(i._mapping) for i in ids]
        edits = list(
            connection.scalars(
                sa.select(messages.c.id).where(messages.c.edit_of == row.id).order_by(messages.c.id)
            )
        )
    result.update(
        edit_of=row.edit_of,
        edits=edits,
        content_type=row.content_type,
        mappings=json.loads(row.mappings or "[]"),
        findings=json.loads(row.findings or "[]"),
        unmapped=json.loads(row.unmapped or "[]"),
        ack=row.ack,
        stored_at=_iso(row.stored_at),
    )
    return result


def trace(engine: sa.Engine, message_id: str) -> dict[str, Any] | None:
    """One message's whole path: raw → canonical → per subscriber every attempt, and actions."""
    result = show(engine, message_id)
    if result is None:
        return None
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(
                messages.c.id,
                messages.c.raw,
                messages.c.canonical,
                messages.c.envelope,
                messages.c.edit,
            ).where(messages.c.id == message_id)
        ).one()
        tried = connection.execute(
            sa.select(attempts)
            .where(attempts.c.message_id == message_id)
            .order_by(attempts.c.at, attempts.c.id)
        )
        done = connection.execute(
            sa.select(actions)
            .where(actions.c.message_id == message_id)
            .order_by(actions.c.at, actions.c.id)
        )
        by_subscriber: dict[str, list[dict[str, Any]]] = {}
        for a in tried:
            by_subscriber.setdefault(a.subscriber, []).append(
                {
                    "at": _iso(a.at),
                    "duration_ms": round(a.duration_ms, 3),
                    "outcome": a.outcome,
                    "ack_code": a.ack_code,
                    "http_status": a.http_status,
                    "reply": a.reply,
                    "error": a.error,
                    "digest": a.digest,
                    "policy": a.policy,
                }
            )
        result["actions"] = [
            {
                "at": _iso(a.at),
                "subscriber": a.subscriber,
                "action": a.action,
                "who": a.who,
                "why": a.why,
                "dead_letter": a.target,
            }
            for a in done
        ]
    raw: bytes | None = sealing.open(row.raw, message_id, "raw") if row.raw is not None else None
    result["raw"] = raw.decode("utf-8", "replace") if raw is not None else None
    result["canonical"] = stored_bundle(row)
    edit = sealing.open_text(row.edit, message_id, "edit") if row.edit else None
    result["edit"] = json.loads(edit) if edit else None
    for delivery in result["deliveries"]:
        delivery["attempt_log"] = by_subscriber.pop(delivery["subscriber"], [])
    for subscriber, tries in sorted(by_subscriber.items()):
        result["deliveries"].append({"subscriber": subscriber, "state": None, "attempt_log": tries})
    return result


def stored_envelope(engine: sa.Engine, message_id: str) -> Envelope | None:
    """The envelope of a stored message, rebuilt from its row; ``None`` if the store lacks it.

    What an operator's resend or replay needs once Redis has dropped the envelope: the same id,
    the canonical Bundle as it was mapped (so the same resource ids), the source, control id,
    patient key and partition. Not kept, hence absent: the journal entry id and the correlation
    id (a log field).
    """
    with engine.connect() as connection:
        row = connection.execute(sa.select(messages).where(messages.c.id == message_id)).first()
    if row is None or row.state == "rejected":
        return None
    return Envelope(
        id=row.id,
        correlation_id=row.control_id,
        source=row.adapter,
        content_type=row.content_type or "application/hl7-v2",
        received_at=datetime.fromtimestamp(row.received_at, UTC),
        event=row.event,
        version=row.version,
        control_id=row.control_id,
        sender=row.sender,
        partition_key=row.partition_key,
        partition=row.partition,
        mappings=json.loads(row.mappings or "[]"),
        findings=json.loads(row.findings or "[]"),
        unmapped=json.loads(row.unmapped or "[]"),
        state=row.state,
        reason=row.reason,
        bundle=stored_bundle(row),
    )


def stored_bundle(row: Any) -> dict[str, Any] | None:
    """The canonical Bundle a ``messages`` row holds: in its envelope (as Redis held it, sealed
    for ``env``), or, in rows written before migration 0007, alone in ``canonical``."""
    if row.envelope is not None:
        bundle: dict[str, Any] | None = json.loads(sealing.open(row.envelope, row.id, "env")).get(
            "bundle"
        )
        return bundle
    if row.canonical:
        return json.loads(sealing.open_text(row.canonical, row.id, "canonical"))  # type: ignore[no-any-return]
    return None


class StoredEnvelopes:
    """``stored_envelope`` on the store at ``url``, opened on first use (operators' fallback).

    Args:
        url: the store's SQLAlchemy URL (``Settings.effective_store_url``).
        engine: an engine already open on it (then ``url`` is not used).

    Raises (on call):
        BrokerError: the store is missing, unreachable or at another schema revision.
    """

    def __init__(self, url: str = "", engine: sa.Engine | None = None) -> None:
        self.url = url
        self.engine = engine

    def __call__(self, message_id: str) -> Envelope | None:
        """The envelope of ``message_id`` as the store holds it, or ``None``."""
        if self.engine is None:
            from broker.store.db import check_current, connect

            try:
                engine = connect(self.url)
            except ServiceUnavailable:
                return None  # no SQLite store yet (the writer creates it): it holds nothing
            check_current(engine)
            self.engine = engine
        try:
            return stored_envelope(self.engine, message_id)
        except sa.exc.OperationalError as exc:
            msg = f"the message store cannot be reached ({type(exc.orig).__name__})"
            raise ServiceUnavailable(msg) from exc
