"""Logins and credential changes, into the audit trail: the one call the access code makes.

``record(kind, who, **ids)`` sends an ``access.KIND`` event (``access.login``,
``access.login_failed``, ``access.token_created``, ``access.token_revoked``…) to the chain's
writer through ``pl:store`` (``broker.audit.sink``: the client the process's entry point
configured). ``ids`` are identifiers only (a user id, a token's id, never the token or a
password); ``reason=`` is taken as the event's reason. Never raises: a login must not fail
because the trail's stream is unreachable (the loss is logged).
"""

from __future__ import annotations

from typing import Any

from broker.audit import sink

__all__ = ["record"]


def record(kind: str, who: str, **ids: Any) -> None:
    """Record an access event: ``kind`` (``login``, ``token_created``…) done by or for ``who``."""
    reason = str(ids.pop("reason", "") or "")
    targets: dict[str, Any] = {k: str(v) for k, v in ids.items() if v is not None}
    sink.send(f"access.{kind}", who=who, why=reason, **targets)
