"""The message store: the system of record, in SQL (SQLite by default, PostgreSQL in production).

Every message's life, written off the ACK path by one writer from ``pl:store`` (``broker.trail``)
and ``pl:rejected``, searchable by the CLI (``passerelle messages``) and the API
(``/api/messages``). ``schema`` holds the tables, ``migrations`` Alembic's revisions, ``db``
the engine and the upgrade, ``records`` the rows made from Redis, ``writer`` the loop,
``query`` the reads, ``retention`` the purge; the audit trail's table is appended by ``ledger``
(in the writer's transaction), pruned by ``pruning`` (for ``retention``), checked by ``verify``
and read by ``auditlog``.
"""

from __future__ import annotations

from broker.store.consents import ConsentRegistry
from broker.store.db import check_current, connect, current_revision, head_revision, upgrade
from broker.store.query import (
    MAX_LIMIT,
    Page,
    Search,
    StoredEnvelopes,
    search,
    show,
    stored_envelope,
    trace,
)
from broker.store.retention import purge
from broker.store.writer import StoreWriter

__all__ = [
    "MAX_LIMIT",
    "ConsentRegistry",
    "Page",
    "Search",
    "StoreWriter",
    "StoredEnvelopes",
    "check_current",
    "connect",
    "current_revision",
    "head_revision",
    "purge",
    "search",
    "show",
    "stored_envelope",
    "trace",
    "upgrade",
]
