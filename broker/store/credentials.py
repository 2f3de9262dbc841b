"""Users, their passwords and API tokens in the store: add, list, disable; set a password;
create, list, revoke, look up.

A user is a person (``admin``, ``integrator``, ``operator``, ``auditor``) or a sending system
(``sender``, bound to one inbound adapter). Its tokens carry its role, or a narrower list of
the role's permissions; each may expire and be revoked. The store keeps a token's SHA-256
(``broker.tokens``), never the token. A person may also have a password, kept as its Argon2id
hash (``broker.passwords``) with a public id that names the console sessions it opened: a new
password gets a new id, which ends those sessions. Nothing is deleted: a disabled user and a revoked token
stay, so the audit trail's names keep meaning something.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from broker.errors import AccessError
from broker.passwords import check_policy, hash_password
from broker.roles import ROLES, SENDER, narrowed
from broker.store.schema import tokens, users
from broker.tokens import NewToken, new_token

__all__ = [
    "StoredPassword",
    "StoredToken",
    "add_user",
    "create_token",
    "find_password",
    "find_password_session",
    "find_token",
    "list_tokens",
    "list_users",
    "rehash_password",
    "revoke_token",
    "set_active",
    "set_password",
    "touch",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,127}$")
_ADAPTER = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_TOKEN_ID = re.compile(r"^[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class StoredToken:
    """A token's row joined with its user's: what checking a presented token needs.

    Attributes:
        id: the token's public id.
        digest: its SHA-256 (hex).
        user: the user's name.
        role: the user's role.
        adapter: a sender's adapter, else ``None``.
        active: the user is enabled.
        permissions: the narrower permission list it was created with, else ``None``.
        expires_at: epoch seconds, ``None``: never.
        revoked_at: epoch seconds, ``None``: not revoked.
        last_used_at: epoch seconds to the minute, ``None``: never used.
    """

    id: str
    digest: str
    user: str
    role: str
    adapter: str | None
    active: bool
    permissions: tuple[str, ...] | None
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class StoredPassword:
    """A user's row as a password login needs it.

    Attributes:
        user: the user's name.
        role: the user's role.
        active: the user is enabled.
        hash: the password's PHC string, ``None``: the user has no password.
        id: the password's public id (what its sessions carry), ``None`` without one.
    """

    user: str
    role: str
    active: bool
    hash: str | None
    id: str | None


def _user_row(connection: sa.Connection, name: str) -> sa.Row[Any] | None:
    return connection.execute(sa.select(users).where(users.c.name == name)).first()


def _user(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        "name": row.name,
        "role": row.role,
        "adapter": row.adapter,
        "active": bool(row.active),
        "created_at": row.created_at,
        "created_by": row.created_by,
        "updated_at": row.updated_at,
        "password": row.password_hash is not None,
        "password_changed_at": row.password_changed_at,
    }


def add_user(
    engine: sa.Engine, name: str, role: str, *, adapter: str | None, by: str, now: float
) -> dict[str, Any]:
    """Add an active user; a ``sender`` needs the inbound adapter it may post as.

    Raises:
        AccessError: the name or adapter id is malformed, the role unknown, a sender has no
            adapter (or another role has one), or the name is taken.
    """
    if not _NAME.match(name):
        msg = (
            f"user name {name!r} must be 1-128 of a-z 0-9 . _ @ - (starting with a letter or digit)"
        )
        raise AccessError(msg)
    if role not in ROLES:
        msg = f"unknown role {role!r}; roles: {', '.join(ROLES)}"
        raise AccessError(msg)
    if role == SENDER and adapter is None:
        msg = "a sender is bound to one inbound adapter: give --adapter ADAPTER_ID"
        raise AccessError(msg)
    if role != SENDER and adapter is not None:
        msg = f"only a sender is bound to an adapter, not a user of role {role}"
        raise AccessError(msg)
    if adapter is not None and not _ADAPTER.match(adapter):
        msg = f"adapter id {adapter!r} is not an adapter id (a-z, 0-9 and -)"
        raise AccessError(msg)
    with engine.begin() as connection:
        if _user_row(connection, name) is not None:
            msg = f"there is already a user {name!r} (`passerelle users list`)"
            raise AccessError(msg)
        row = {
            "name": name,
            "role": role,
            "adapter": adapter,
            "active": True,
            "created_at": now,
            "created_by": by,
            "updated_at": now,
        }
        connection.execute(sa.insert(users).values(**row))
    return {**row, "active": True, "password": False, "password_changed_at": None}


def list_users(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every user, by name, with how many tokens are in force (not revoked, not expired)."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(users).order_by(users.c.name)).all()
        counts: dict[str, int] = dict(
            connection.execute(
                sa.select(tokens.c.user_name, sa.func.count())
                .where(tokens.c.revoked_at.is_(None))
                .group_by(tokens.c.user_name)
            ).all()
        )
    return [{**_user(row), "tokens": int(counts.get(row.name, 0))} for row in rows]


def set_active(
    engine: sa.Engine, name: str, active: bool, *, by: str, now: float
) -> dict[str, Any]:
    """Enable or disable a user; a disabled user's tokens are all refused.

    Raises:
        AccessError: no such user.
    """
    with engine.begin() as connection:
        if _user_row(connection, name) is None:
            msg = f"no user {name!r} (`passerelle users list`)"
            raise AccessError(msg)
        connection.execute(
            sa.update(users).where(users.c.name == name).values(active=active, updated_at=now)
        )
        row = _user_row(connection, name)
    assert row is not None
    return _user(row)


def set_password(engine: sa.Engine, name: str, password: str, *, now: float) -> dict[str, Any]:
    """Give a person a new password (policy checked, hashed); its previous password's sessions
    end (the new password has a new id). Who did it is the caller's access event.

    Raises:
        AccessError: no such user, a sender (it logs in with its token), or a password the
            policy refuses (the message says why, never the password).
    """
    with engine.connect() as connection:
        owner = _user_row(connection, name)
    if owner is None:
        msg = f"no user {name!r} (`passerelle users list`)"
        raise AccessError(msg)
    if owner.role == SENDER:
        msg = f"{name!r} is a sending system: it uses its token, never a password"
        raise AccessError(msg)
    try:
        check_policy(name, password)
    except ValueError as exc:
        raise AccessError(str(exc)) from exc
    hashed = hash_password(password)  # outside the transaction: it takes tens of milliseconds
    with engine.begin() as connection:
        connection.execute(
            sa.update(users)
            .where(users.c.name == name)
            .values(
                password_hash=hashed,
                password_id=secrets.token_hex(6),
                password_changed_at=now,
                updated_at=now,
            )
        )
        row = _user_row(connection, name)
    assert row is not None
    return _user(row)


def _password(row: sa.Row[Any] | None) -> StoredPassword | None:
    if row is None:
        return None
    return StoredPassword(row.name, row.role, bool(row.active), row.password_hash, row.password_id)


def find_password(engine: sa.Engine, name: str) -> StoredPassword | None:
    """The user ``name`` as a password login needs it, or ``None``: no such user."""
    with engine.connect() as connection:
        return _password(_user_row(connection, name))


def find_password_session(engine: sa.Engine, password_id: str) -> StoredPassword | None:
    """The user whose current password has the id ``password_id``, or ``None``: the password
    was changed since (or never existed)."""
    with engine.connect() as connection:
        row = connection.execute(sa.select(users).where(users.c.password_id == password_id)).first()
    return _password(row)


def rehash_password(engine: sa.Engine, name: str, old: str, new: str) -> bool:
    """Replace the hash ``old`` of ``name``'s password with ``new`` (the same password under
    today's parameters); its id, and so its sessions, stay. Whether it was replaced: not when
    the password changed meanwhile."""
    with engine.begin() as connection:
        done = connection.execute(
            sa.update(users)
            .where(users.c.name == name, users.c.password_hash == old)
            .values(password_hash=new)
        )
    return bool(done.rowcount)


def create_token(
    engine: sa.Engine,
    user: str,
    *,
    by: str,
    now: float,
    expires_at: float | None,
    permissions: list[str] | None = None,
    label: str | None = None,
) -> tuple[NewToken, dict[str, Any]]:
    """A new token for an active user: the token (to show once) and its row (without it).

    Raises:
        AccessError: no such user, the user is disabled, the expiry is not in the future, or a
            permission is unknown or beyond the user's role.
    """
    if expires_at is not None and expires_at <= now:
        raise AccessError("a token must expire in the future")
    made = new_token()
    with engine.begin() as connection:
        owner = _user_row(connection, user)
        if owner is None:
            msg = f"no user {user!r}: add it first (`passerelle users add`)"
            raise AccessError(msg)
        if not owner.active:
            msg = f"user {user!r} is disabled: enable it before giving it a token"
            raise AccessError(msg)
        try:
            chosen = None if permissions is None else sorted(narrowed(owner.role, permissions))
        except ValueError as exc:
            raise AccessError(str(exc)) from exc
        row = {
            "id": made.id,
            "user_name": user,
            "label": label,
            "digest": made.digest,
            "permissions": None if chosen is None else " ".join(chosen),
            "created_at": now,
            "created_by": by,
            "expires_at": expires_at,
        }
        connection.execute(sa.insert(tokens).values(**row))
    shown = {
        "id": made.id,
        "user": user,
        "role": owner.role,
        "adapter": owner.adapter,
        "label": label,
        "permissions": chosen,
        "created_at": now,
        "expires_at": expires_at,
    }
    return made, shown


def _token(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "user": row.user_name,
        "role": row.role,
        "adapter": row.adapter,
        "label": row.label,
        "permissions": row.permissions.split() if row.permissions else None,
        "created_at": row.created_at,
        "created_by": row.created_by,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
        "revoked_by": row.revoked_by,
        "last_used_at": row.last_used_at,
    }


def _joined() -> sa.Select[Any]:
    return sa.select(tokens, users.c.role, users.c.adapter, users.c.active).join(
        users, users.c.name == tokens.c.user_name
    )


def list_tokens(
    engine: sa.Engine, *, user: str | None = None, revoked: bool = False
) -> list[dict[str, Any]]:
    """Tokens (never their secret or digest), newest first; revoked ones only when asked."""
    query = _joined().order_by(tokens.c.created_at.desc(), tokens.c.id)
    if user is not None:
        query = query.where(tokens.c.user_name == user)
    if not revoked:
        query = query.where(tokens.c.revoked_at.is_(None))
    with engine.connect() as connection:
        return [_token(row) for row in connection.execute(query).all()]


def revoke_token(engine: sa.Engine, token_id: str, *, by: str, now: float) -> dict[str, Any]:
    """Revoke a token for good (revoking a revoked token changes nothing).

    Raises:
        AccessError: no token with this id.
    """
    if not _TOKEN_ID.match(token_id):
        msg = f"{token_id!r} is not a token id (12 hex digits, as `passerelle tokens list` shows)"
        raise AccessError(msg)
    with engine.begin() as connection:
        connection.execute(
            sa.update(tokens)
            .where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
            .values(revoked_at=now, revoked_by=by)
        )
        row = connection.execute(_joined().where(tokens.c.id == token_id)).first()
    if row is None:
        msg = f"no token {token_id} (`passerelle tokens list --revoked`)"
        raise AccessError(msg)
    return _token(row)


def find_token(engine: sa.Engine, token_id: str) -> StoredToken | None:
    """The token ``token_id`` with its user's role, adapter and state, or ``None``."""
    with engine.connect() as connection:
        row = connection.execute(_joined().where(tokens.c.id == token_id)).first()
    if row is None:
        return None
    return StoredToken(
        id=row.id,
        digest=row.digest,
        user=row.user_name,
        role=row.role,
        adapter=row.adapter,
        active=bool(row.active),
        permissions=tuple(row.permissions.split()) if row.permissions else None,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def touch(engine: sa.Engine, token_id: str, now: float) -> None:
    """Record that the token was used (to the minute: one write per token per minute at most)."""
    with engine.begin() as connection:
        connection.execute(
            sa.update(tokens).where(tokens.c.id == token_id).values(last_used_at=now - now % 60)
        )
