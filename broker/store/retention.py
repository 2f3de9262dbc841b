"""Retention: the store forgets by age, per kind, in small batches.

Messages (with their identifiers and per-subscriber states) by when they were received, after
their state's setting (``store_retention_by_state_s``: rejected and failed ones) or the general one,
attempts by when they were made, operator actions by when they were taken, each after its own
setting (``store_retention_messages_s``, ``..._attempts_s``, ``..._actions_s``), and the audit
trail's oldest entries after ``retention_audit_s``, once an entry of the chain vouches for them
(``broker.store.pruning``). Each batch is its own short transaction, so a purge never holds a
long lock on a store the writer is writing. ``passerelle store purge`` runs it; the writer runs
it every ten minutes.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from broker.settings import Settings
from broker.store.pruning import prune
from broker.store.schema import actions, attempts, deliveries, identifiers, messages

__all__ = ["BATCH", "purge"]

BATCH = 1000
"""Rows deleted per transaction."""


def _purge_messages(
    engine: sa.Engine, cutoff: float, batch: int, where: sa.ColumnElement[bool] | None = None
) -> int:
    where = sa.true() if where is None else where
    total = 0
    while True:
        with engine.begin() as connection:
            ids = list(
                connection.scalars(
                    sa.select(messages.c.id)
                    .where(messages.c.received_at < cutoff, where)
                    .limit(batch)
                )
            )
            if not ids:
                return total
            connection.execute(identifiers.delete().where(identifiers.c.message_id.in_(ids)))
            connection.execute(deliveries.delete().where(deliveries.c.message_id.in_(ids)))
            connection.execute(messages.delete().where(messages.c.id.in_(ids)))
        total += len(ids)
        if len(ids) < batch:
            return total


def _purge_by_at(engine: sa.Engine, table: sa.Table, cutoff: float, batch: int) -> int:
    total = 0
    while True:
        with engine.begin() as connection:
            ids = list(
                connection.scalars(sa.select(table.c.id).where(table.c.at < cutoff).limit(batch))
            )
            if ids:
                connection.execute(table.delete().where(table.c.id.in_(ids)))
        total += len(ids)
        if len(ids) < batch:
            return total


def purge(
    engine: sa.Engine,
    settings: Settings,
    *,
    now: float | None = None,
    batch: int = BATCH,
    key: bytes | None = None,
) -> dict[str, int]:
    """Delete what is older than its retention; return how many of each kind went.

    Args:
        engine: the store.
        settings: the store's retention settings (messages, per state, attempts, actions,
            audit).
        now: the present (epoch seconds); the clock by default.
        batch: rows per transaction.
        key: the audit key (the writer's); else loaded from ``settings`` when entries of the
            audit trail are old enough to go.

    Raises:
        ConfigurationError: audit entries are old enough to go, and no audit key is configured.
    """
    now = time.time() if now is None else now
    by_state = settings.store_retention_by_state_s
    purged = {
        f"messages_{state}": _purge_messages(engine, now - age, batch, messages.c.state == state)
        for state, age in sorted(by_state.items())
    }
    others = messages.c.state.not_in(list(by_state)) if by_state else sa.true()
    return {
        "messages": _purge_messages(
            engine, now - settings.store_retention_messages_s, batch, others
        )
        + sum(purged.values()),
        "attempts": _purge_by_at(
            engine, attempts, now - settings.store_retention_attempts_s, batch
        ),
        "actions": _purge_by_at(engine, actions, now - settings.store_retention_actions_s, batch),
        "audit": prune(engine, settings, now=now, batch=batch, key=key),
    }
