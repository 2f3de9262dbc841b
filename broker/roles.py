"""Who may do what: the roles and the permissions each holds (one table, docs/security.md).

A permission names one kind of action (``messages.replay``), a role is a fixed set of them. Every
API route and console page declares the one permission it needs (``broker.guard.require``); a
credential holds its role's permissions, or fewer when it was created with a narrower list. The
vocabulary is shared by every part of issue 10 (users, audit, consent, policy): a new kind of
action gets a new permission here, in :data:`GRANTS`, and in the table of docs/security.md.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["GRANTS", "PERMISSIONS", "ROLES", "SENDER", "narrowed", "permissions_of"]

SENDER = "sender"
"""The role of a sending system's credential: bound to one inbound adapter, it may post only as it."""

ROLES = ("admin", "integrator", "operator", "auditor", SENDER)
"""Every role, most powerful first."""

GRANTS: dict[str, frozenset[str]] = {
    "overview.read": frozenset({"admin", "integrator", "operator", "auditor"}),
    "messages.read": frozenset({"admin", "integrator", "operator", "auditor"}),
    # Auditors read content too, each view with its reason (docs/security.md, "Audit trail").
    "messages.content": frozenset({"admin", "integrator", "operator", "auditor"}),
    "messages.replay": frozenset({"admin", "operator"}),
    "messages.edit": frozenset({"admin", "operator"}),
    "identity.edit": frozenset({"admin"}),
    "config.read": frozenset({"admin", "integrator", "operator", "auditor"}),
    "config.write": frozenset({"admin", "integrator"}),
    "policy.read": frozenset({"admin", "integrator", "auditor"}),
    "policy.write": frozenset({"admin"}),
    "audit.read": frozenset({"admin", "auditor"}),
    "users.manage": frozenset({"admin"}),
    "inbound.post": frozenset({"admin", SENDER}),
}
"""Each permission and the roles that hold it (the shared vocabulary of issue 10)."""

PERMISSIONS = tuple(GRANTS)
"""Every permission, in the order of the table."""


def permissions_of(role: str) -> frozenset[str]:
    """The permissions ``role`` holds (none for an unknown role: never more than asked)."""
    return frozenset(p for p, roles in GRANTS.items() if role in roles)


def narrowed(role: str, wanted: Iterable[str] | None) -> frozenset[str]:
    """The permissions of a credential of ``role`` limited to ``wanted`` (``None``: the role's).

    Raises:
        ValueError: a wanted permission is unknown or not one the role holds; the message
            names it and what the role may have.
    """
    held = permissions_of(role)
    if wanted is None:
        return held
    chosen = frozenset(wanted)
    unknown = sorted(chosen - set(PERMISSIONS))
    if unknown:
        msg = f"unknown permission {unknown[0]!r}; known: {', '.join(PERMISSIONS)}"
        raise ValueError(msg)
    beyond = sorted(chosen - held)
    if beyond:
        msg = (
            f"the role {role} does not hold {beyond[0]!r}; a token may only narrow its role's "
            f"permissions ({', '.join(sorted(held)) or 'none'})"
        )
        raise ValueError(msg)
    return chosen
