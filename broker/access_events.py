"""What happened to access, into the audit trail: logins and lockouts, tokens created and revoked,
user and password changes.

Every part that changes or checks access calls :func:`record` and nothing else: it sends an
``access.KIND`` event to the chain's writer through ``pl:store`` (``broker.audit.sink``: the
client the process's entry point configured) and logs it. Events carry names and ids only: a
user's name, a token's public id, a role, an adapter, the client's address; never a token or a
password; ``reason=`` is the event's reason. Never raises for the trail: a login must not fail
because the trail's stream is unreachable (the sink logs the loss).
"""

from __future__ import annotations

from typing import Any

from broker.audit import sink
from broker.log import get_logger

__all__ = ["KINDS", "record"]

KINDS = frozenset(
    {
        "login",  # a console login (who: the user; method: password or token)
        "login_failed",  # a console login refused (who: "unknown"; reason: why)
        "login_locked",  # failed logins locked a name or an address out (reason: which, how long)
        "logout",
        "password_set",  # a person's password set or reset (user: whose)
        "token_created",
        "token_revoked",
        "user_added",
        "user_disabled",
        "user_enabled",
    }
)
"""The kinds of access event; another kind is a programming error."""

IDS = frozenset({"user", "token_id", "role", "adapter", "peer", "reason", "permissions", "method"})
"""The keys an event may carry besides who acted (each on ``broker.log.ALLOWED_KEYS``)."""

_log = get_logger("broker.access")


def record(kind: str, who: str, **ids: str | None) -> None:
    """Record an access event: ``kind`` done by ``who`` (a user's name, ``api``, ``cli:<login>``).

    Raises:
        ValueError: an unknown kind or key (a programming error, caught by the tests).
    """
    if kind not in KINDS:
        msg = f"unknown access event {kind!r}; known: {', '.join(sorted(KINDS))}"
        raise ValueError(msg)
    unknown = sorted(set(ids) - IDS)
    if unknown:
        msg = f"access event key {unknown[0]!r} is not one of {', '.join(sorted(IDS))}"
        raise ValueError(msg)
    present: dict[str, Any] = {k: v for k, v in ids.items() if v is not None}
    _log.info(f"access.{kind}", who=who, **present)
    reason = str(present.pop("reason", "") or "")
    sink.send(f"access.{kind}", who=who, why=reason, **present)
