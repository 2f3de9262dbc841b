"""The consent registry's changes and reads in the message store (``consents``).

Every change sets ``broker.policy.consent.VERSION_KEY`` to a new token on the broker's Redis, so the delivery
workers load the registry again before their next batch.
"""

from __future__ import annotations

import time
import uuid

import redis
import sqlalchemy as sa

from broker.policy.consent import VERSION_KEY, Consent, ConsentError, consent_of
from broker.store.schema import consents

__all__ = ["ConsentRegistry"]


class ConsentRegistry:
    """Reads and changes the registry in the store; every change sets ``VERSION_KEY`` anew.

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
            connection.execute(consents.insert().values(**entry.public()))
        self.client.set(VERSION_KEY, uuid.uuid4().hex)
        return entry

    def revoke(self, consent_id: str, *, who: str) -> Consent:
        """Revoke a consent (kept, with who and when).

        Raises:
            ConsentError: no such consent, or already revoked.
        """
        table = consents
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
        self.client.set(VERSION_KEY, uuid.uuid4().hex)
        return consent_of(row)

    def list(
        self,
        *,
        system: str | None = None,
        value: str | None = None,
        subscriber: str | None = None,
        revoked: bool = False,
    ) -> list[Consent]:
        """The consents, newest first, filtered by identifier and subscriber."""
        table = consents
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
            return [consent_of(r) for r in connection.execute(query)]
