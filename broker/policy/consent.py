"""The patient consent / opt-out registry: who blocked or restricted sharing, with whom, why.

The registry's system of record is the message store's ``consents`` table (SQL), changed by
``broker.store.consents.ConsentRegistry`` (API and CLI). The delivery drains consult it for
every message, so they keep a snapshot in memory: once per batch they read one Redis key
(``pl:consent:version``), and load the snapshot again when a change has set it to a new token,
or when it is ``MAX_AGE_S`` old. A snapshot that cannot be loaded fails the delivery as
retryable: nothing leaves on a registry nobody could read.

A consent names a patient by one identifier (system and value, e.g. the CIN), applies to one
subscriber or to all (``subscriber`` empty), ``block`` (nothing is sent) or ``restrict`` (only
the policy's ``minimum`` elements are sent), for a period, with who recorded it and why.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis
import sqlalchemy as sa

from broker.errors import BrokerError, RetryableDeliveryError, ServiceUnavailable

__all__ = [
    "MAX_AGE_S",
    "VERSION_KEY",
    "Consent",
    "ConsentError",
    "ConsentLookup",
    "Consents",
    "consent_of",
    "snapshot",
]

VERSION_KEY = "pl:consent:version"
"""Set to a new random token by every change: the drains reload their snapshot when it moves.
A token, not a counter: a Redis that lost the key and counted again from 1 would match a
worker's stale snapshot."""
MAX_AGE_S = 30.0
"""A snapshot is loaded again after this long even when the version did not move (a change
whose announcement was lost, Redis down at the time, is seen within it)."""

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


_TABLE = sa.table(
    "consents",
    *(
        sa.column(name)
        for name in (
            "id", "system", "value", "subscriber", "action", "reason", "valid_from",
            "valid_until", "who", "created_at", "revoked_at", "revoked_by",
        )
    ),
)  # fmt: skip
"""The store's ``consents`` table as far as reading it goes (``broker.store.schema`` defines it;
this package sits below the store, so it names the columns it reads)."""


def consent_of(row: Any) -> Consent:
    """A ``Consent`` from a ``consents`` row."""
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


_cache: dict[str, tuple[bytes | None, float, Consents]] = {}
_engines: dict[str, sa.Engine] = {}
_lock = threading.Lock()


def _load(url: str) -> Consents:
    engine = _engines.get(url)
    if engine is None:
        parsed = sa.engine.make_url(url)
        local = parsed.get_backend_name() == "sqlite" and parsed.database not in (
            None,
            "",
            ":memory:",
        )
        if local and not Path(str(parsed.database)).exists():
            msg = "there is no message store yet"
            raise ServiceUnavailable(msg)
        engine = _engines[url] = sa.create_engine(parsed, pool_pre_ping=True)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(_TABLE).where(_TABLE.c.revoked_at.is_(None)))
        return Consents([consent_of(r) for r in rows])


def snapshot(client: redis.Redis, store_url: str) -> Consents:
    """The registry as this process knows it, reloaded when ``VERSION_KEY`` moved.

    One Redis GET; the SQL load only on the first call, after a change, and every
    ``MAX_AGE_S``. A store that does
    not exist yet, when no change was ever announced, is an empty registry.

    Raises:
        RetryableDeliveryError: the registry cannot be read (the delivery waits, never sends
            on an unknown registry).
    """
    version = client.get(VERSION_KEY)
    cached = _cache.get(store_url)
    now = time.monotonic()
    if cached is not None and cached[0] == version and now - cached[1] < MAX_AGE_S:
        return cached[2]
    with _lock:
        try:
            found = _load(store_url)
        except (
            ServiceUnavailable,
            sa.exc.OperationalError,
            sa.exc.ProgrammingError,
            sa.exc.ArgumentError,
            ImportError,
        ) as exc:
            if version is None:
                found = EMPTY  # no store, or no consents table yet, and nobody ever changed one
            else:
                msg = f"the consent registry cannot be read ({type(exc).__name__})"
                raise RetryableDeliveryError(msg, destination="consent registry") from exc
        _cache[store_url] = (version, now, found)
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
