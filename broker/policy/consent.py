"""The patient consent / opt-out registry: who blocked or restricted sharing, with whom, why.

The registry's system of record is the message store's ``consents`` table (SQL). The delivery
drains consult it for every message, so they keep a snapshot in memory: once per batch they
read one Redis counter (``pl:consent:version``), and load the snapshot again only when a
change (``ConsentRegistry.add``/``revoke``, API and CLI) has bumped it. A snapshot that cannot
be loaded fails the delivery as retryable: nothing leaves on a registry nobody could read.

A consent names a patient by one identifier (system and value, e.g. the CIN), applies to one
subscriber or to all (``subscriber`` empty), ``block`` (nothing is sent) or ``restrict`` (only
the policy's ``minimum`` elements are sent), for a period, with who recorded it and why.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import redis
import sqlalchemy as sa

from broker.errors import BrokerError, RetryableDeliveryError, ServiceUnavailable

__all__ = [
    "VERSION_KEY",
    "Consent",
    "ConsentError",
    "ConsentLookup",
    "ConsentRegistry",
    "Consents",
    "snapshot",
]

VERSION_KEY = "pl:consent:version"
"""Bumped (INCR) by every change: the drains reload their snapshot when it moves."""

Action = Literal["block", "restrict"]


class ConsentError(BrokerError):
    """Raised when a consent change cannot be made; the message says why."""


@dataclass(frozen=True)
class Consent:
    """One consent entry (a row of ``consents``)."""

    id: str
    system: str
    value: str
    subscriber: str | None
    action: str
    reason: str
    valid_from: float
    valid_until: float | None
    who: str
    created_at: float
    revoked_at: float | None = None
    revoked_by: str | None = None

    def active(self, now: float) -> bool:
        """In force at ``now``: not revoked, inside its period."""
        return (
            self.revoked_at is None
            and self.valid_from <= now
            and (self.valid_until is None or now < self.valid_until)
        )

    def public(self) -> dict[str, Any]:
        """As JSON data for the API, the CLI and ``policy explain``."""
        return dict(self.__dict__)


class Consents:
    """An immutable snapshot of the active consents, indexed by (system, value)."""

    def __init__(self, entries: list[Consent]) -> None:
        self._index: dict[tuple[str, str], list[Consent]] = {}
        for entry in entries:
            self._index.setdefault((entry.system, entry.value), []).append(entry)

    def __len__(self) -> int:
        return sum(len(v) for v in self._index.values())

    def applying(
        self, subscriber: str, identifiers: list[tuple[str, str]], now: float
    ) -> list[Consent]:
        """The consents in force at ``now`` for ``subscriber`` on any of ``identifiers``."""
        if not self._index:
            return []
        found = []
        for ident in identifiers:
            for entry in self._index.get(ident, ()):
                if entry.subscriber in (None, subscriber) and entry.active(now):
                    found.append(entry)
        return found


EMPTY = Consents([])


def _table() -> sa.Table:
    from broker.store.schema import consents

    return consents


def _row(row: Any) -> Consent:
    return Consent(
        id=row.id,
        system=row.system,
        value=row.value,
        subscriber=row.subscriber,
        action=row.action,
        reason=row.reason,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        who=row.who,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
    )


class ConsentRegistry:
    """Reads and changes the registry in the store; every change bumps ``VERSION_KEY``.

    Args:
        engine: the message store (schema up to date).
        client: the broker's Redis, told of each change.
    """

    def __init__(self, engine: sa.Engine, client: redis.Redis) -> None:
        self.engine = engine
        self.client = client

    def add(
        self,
        *,
        system: str,
        value: str,
        action: str,
        reason: str,
        who: str,
        subscriber: str | None = None,
        valid_from: float | None = None,
        valid_until: float | None = None,
    ) -> Consent:
        """Record a consent; return it.

        Raises:
            ConsentError: an empty identifier or reason, an unknown action, or a period that
                ends before it starts.
        """
        if not system.strip() or not value.strip():
            raise ConsentError("a consent names the patient's identifier: its system and value")
        if action not in ("block", "restrict"):
            msg = f"unknown consent action {action!r}; expected block or restrict"
            raise ConsentError(msg)
        if not reason.strip():
            raise ConsentError("a consent says why (it is recorded with who and when)")
        now = time.time()
        start = now if valid_from is None else valid_from
        if valid_until is not None and valid_until <= start:
            raise ConsentError("the consent's period ends before it starts")
        entry = Consent(
            id=uuid.uuid4().hex,
            system=system.strip(),
            value=value.strip(),
            subscriber=subscriber or None,
            action=action,
            reason=reason.strip(),
            valid_from=start,
            valid_until=valid_until,
            who=who,
            created_at=now,
        )
        with self.engine.begin() as connection:
            connection.execute(_table().insert().values(**entry.public()))
        self.client.incr(VERSION_KEY)
        return entry

    def revoke(self, consent_id: str, *, who: str) -> Consent:
        """Revoke a consent (kept, with who and when).

        Raises:
            ConsentError: no such consent, or already revoked.
        """
        table = _table()
        with self.engine.begin() as connection:
            row = connection.execute(sa.select(table).where(table.c.id == consent_id)).first()
            if row is None:
                msg = f"no consent {consent_id}"
                raise ConsentError(msg)
            if row.revoked_at is not None:
                msg = f"consent {consent_id} is already revoked"
                raise ConsentError(msg)
            connection.execute(
                table.update()
                .where(table.c.id == consent_id)
                .values(revoked_at=time.time(), revoked_by=who)
            )
            row = connection.execute(sa.select(table).where(table.c.id == consent_id)).one()
        self.client.incr(VERSION_KEY)
        return _row(row)

    def list(
        self,
        *,
        system: str | None = None,
        value: str | None = None,
        subscriber: str | None = None,
        revoked: bool = False,
    ) -> list[Consent]:
        """The consents, newest first, filtered by identifier and subscriber."""
        table = _table()
        query = sa.select(table).order_by(table.c.created_at.desc())
        if system:
            query = query.where(table.c.system == system)
        if value:
            query = query.where(table.c.value == value)
        if subscriber:
            query = query.where(
                sa.or_(table.c.subscriber == subscriber, table.c.subscriber.is_(None))
            )
        if not revoked:
            query = query.where(table.c.revoked_at.is_(None))
        with self.engine.connect() as connection:
            return [_row(r) for r in connection.execute(query)]


_cache: dict[str, tuple[bytes | None, Consents]] = {}
_engines: dict[str, sa.Engine] = {}
_lock = threading.Lock()


def _load(url: str) -> Consents:
    from broker.store import connect

    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = connect(url)
    table = _table()
    with engine.connect() as connection:
        rows = connection.execute(sa.select(table).where(table.c.revoked_at.is_(None)))
        return Consents([_row(r) for r in rows])


def snapshot(client: redis.Redis, store_url: str) -> Consents:
    """The registry as this process knows it, reloaded when ``VERSION_KEY`` moved.

    One Redis GET; the SQL load only on the first call and after a change. A store that does
    not exist yet, when no change was ever announced, is an empty registry.

    Raises:
        RetryableDeliveryError: the registry cannot be read (the delivery waits, never sends
            on an unknown registry).
    """
    version = client.get(VERSION_KEY)
    cached = _cache.get(store_url)
    if cached is not None and cached[0] == version:
        return cached[1]
    with _lock:
        try:
            found = _load(store_url)
        except (ServiceUnavailable, sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            if version is None:
                found = EMPTY  # no store, or no consents table yet, and nobody ever changed one
            else:
                msg = f"the consent registry cannot be read ({type(exc).__name__})"
                raise RetryableDeliveryError(msg, destination="consent registry") from exc
        _cache[store_url] = (version, found)
    return found


class ConsentLookup:
    """The registry's snapshot for one batch of deliveries: read (at most) once, on first use."""

    def __init__(self, client: redis.Redis, store_url: str) -> None:
        self.client = client
        self.store_url = store_url
        self._found: Consents | None = None

    def __call__(self) -> Consents:
        if self._found is None:
            self._found = snapshot(self.client, self.store_url)
        return self._found
