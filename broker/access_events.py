"""Logins and credential changes, into the audit trail: the one call the access code makes.

``record(kind, who, **ids)`` sends an ``access.KIND`` event (``access.login``,
``access.login_failed``, ``access.token_created``, ``access.token_revoked``…) through
``pl:store`` to the chain's writer. ``ids`` are identifiers only (a user id, a token's id,
never the token or a password); ``reason=`` is taken as the event's reason. The Redis client is
the one ``configure`` was given (the API sets it at start-up); without one the event is logged
as lost, never raised: a login must not fail because the trail's stream is unreachable.
"""

from __future__ import annotations

from typing import Any

import redis

from broker.audit.events import record as audit_record
from broker.log import get_logger

__all__ = ["configure", "record"]

log = get_logger(__name__)
_client: redis.Redis | None = None


def configure(client: redis.Redis | None) -> None:
    """Use ``client`` (the broker's Redis) for the events ``record`` sends from now on."""
    global _client  # one client per process, set by its entry point
    _client = client


def record(kind: str, who: str, **ids: Any) -> None:
    """Record an access event: ``kind`` (``login``, ``token_created``…) done by or for ``who``."""
    reason = str(ids.pop("reason", "") or "")
    targets = {k: (str(v) if v is not None else None) for k, v in ids.items()}
    if _client is None:
        log.error("audit.lost", reason="no Redis client configured for access events")
        return
    try:
        audit_record(_client, f"access.{kind}", who=who, why=reason, **targets)
    except redis.RedisError as exc:
        log.error("audit.lost", error=type(exc).__name__)
