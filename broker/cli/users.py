"""``passerelle users add|list|passwd|disable|enable`` and ``passerelle tokens create|list|revoke``.

They write the store the settings name (``PASSERELLE_STORE_URL``, by default SQLite in the data
directory), like ``passerelle messages``; the running API sees a change within
``broker.access.REVOCATION_DELAY_S`` seconds. Each change is recorded as done by
``cli:<login>`` (``broker.access_events``). A token is printed once, by ``tokens create``:
Passerelle keeps only its SHA-256. A password is never an argument (the shell's history and
``ps`` would show it): ``users passwd`` asks for it twice without echo, or reads one line from
standard input with ``--password-stdin``.

Exit codes: 0 done, 1 refused or failed (one line on stderr), 2 usage errors.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from broker.cli._common import (
    DataDirOpt,
    fail,
    open_store,
    print_json,
)

if TYPE_CHECKING:
    import sqlalchemy

__all__ = ["parse_expiry", "tokens_app", "users_app"]

users_app = typer.Typer(
    name="users",
    help="People and sending systems that may use the API and the console, with their role.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tokens_app = typer.Typer(
    name="tokens",
    help="API tokens: create (shown once), list, revoke.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
RoleOpt = Annotated[
    str | None,
    typer.Option("--role", help="admin, integrator, operator, auditor or sender."),
]
AdapterOpt = Annotated[
    str | None,
    typer.Option("--adapter", help="A sender's inbound adapter: it may post only as it."),
]
_DURATION = re.compile(r"^(\d{1,5})([dhw])$")
_UNIT_S = {"h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_expiry(value: str, now: float) -> float | None:
    """Epoch seconds ``value`` from ``now`` (``90d``, ``12h``, ``4w``); ``never``: ``None``.

    Exits 2 on anything else.
    """
    if value == "never":
        return None
    found = _DURATION.match(value)
    if found is None or int(found.group(1)) == 0:
        fail(f"--expires {value!r} is not a duration: give e.g. 90d, 12h, 4w, or never", 2)
    return now + int(found.group(1)) * _UNIT_S[found.group(2)]


def _who() -> str:
    """Who a command-line change is recorded as: ``cli:<login>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container's numeric uid)
        return "cli"


def _engine(data_dir: Any) -> sqlalchemy.Engine:
    """The store the settings name, its schema checked (exit 1 with one line otherwise)."""
    return open_store(data_dir)[1]


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _times(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its epoch times (``*_at``) as ISO 8601 UTC."""
    return {k: _iso(v) if k.endswith("_at") else v for k, v in row.items()}


@users_app.command("add")
def add_user(
    name: Annotated[str, typer.Argument(help="A login (amina.benali) or a system (labo-casa).")],
    role: RoleOpt = None,
    adapter: AdapterOpt = None,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Add a user with a role; a sender (a sending system) needs --adapter."""
    from broker import access_events
    from broker.errors import AccessError
    from broker.store.credentials import add_user as run_add

    if role is None:
        fail("--role is required: admin, integrator, operator, auditor or sender", 2)
    who = _who()
    try:
        user = run_add(_engine(data_dir), name, role, adapter=adapter, by=who, now=time.time())
    except AccessError as exc:
        fail(str(exc))
    access_events.record("user_added", who, user=name, role=role, adapter=adapter)
    if as_json:
        print_json(_times(user))
        return
    bound = f", posts as {adapter}" if adapter else ""
    typer.echo(f"added {name} ({role}{bound}); give it a token: passerelle tokens create {name}")


@users_app.command("list")
def list_users(as_json: JsonOpt = False, data_dir: DataDirOpt = None) -> None:
    """Every user: role, adapter, active, tokens in force."""
    from broker.store.credentials import list_users as run_list

    found = [_times(u) for u in run_list(_engine(data_dir))]
    if as_json:
        print_json(found)
        return
    for user in found:
        state = "active" if user["active"] else "disabled"
        adapter = user["adapter"] or "-"
        password = "  password" if user["password"] else ""
        typer.echo(
            f"{user['name']}  {user['role']}  {adapter}  {state}  {user['tokens']} token(s)"
            + password
        )


def _read_password(from_stdin: bool) -> str:
    """The new password: one line of standard input, or asked twice without echo."""
    import sys

    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            fail("--password-stdin: standard input is empty; give the password on one line", 2)
        return line.removesuffix("\n").removesuffix("\r")
    first = typer.prompt("New password", hide_input=True)
    if typer.prompt("Again", hide_input=True) != first:
        fail("the two passwords differ; nothing was changed")
    return str(first)


@users_app.command("passwd")
def set_password(
    name: Annotated[str, typer.Argument(help="The person (not a sender: it uses its token).")],
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read the password from one line of stdin (scripts)."
        ),
    ] = False,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Set or reset a person's console password (asked twice, or --password-stdin).

    At least 12 characters, not the user's name; its previous sessions end.
    """
    from broker import access_events
    from broker.access import REVOCATION_DELAY_S
    from broker.errors import AccessError
    from broker.store.credentials import find_password
    from broker.store.credentials import set_password as run_set

    engine = _engine(data_dir)
    if find_password(engine, name) is None:  # before asking for a password
        fail(f"no user {name!r} (`passerelle users list`)")
    password = _read_password(password_stdin)
    who = _who()
    try:
        user = run_set(engine, name, password, now=time.time())
    except AccessError as exc:
        fail(str(exc))
    access_events.record("password_set", who, user=name)
    if as_json:
        print_json(_times(user))
        return
    typer.echo(
        f"password of {name} set; its console sessions opened with the previous one end within "
        f"{REVOCATION_DELAY_S:g} s"
    )


def _set_active(name: str, active: bool, as_json: bool, data_dir: Any) -> None:
    from broker import access_events
    from broker.errors import AccessError
    from broker.store.credentials import set_active

    who = _who()
    try:
        user = set_active(_engine(data_dir), name, active, by=who, now=time.time())
    except AccessError as exc:
        fail(str(exc))
    access_events.record("user_enabled" if active else "user_disabled", who, user=name)
    if as_json:
        print_json(_times(user))
        return
    from broker.access import REVOCATION_DELAY_S

    if active:
        typer.echo(f"enabled {name}: its tokens in force work again")
    else:
        typer.echo(
            f"disabled {name}: its tokens are refused within {REVOCATION_DELAY_S:g} s "
            "(sessions included)"
        )


@users_app.command("disable")
def disable_user(
    name: Annotated[str, typer.Argument(help="The user.")],
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Disable a user: every token of it is refused (it stays listed, for the audit trail)."""
    _set_active(name, False, as_json, data_dir)


@users_app.command("enable")
def enable_user(
    name: Annotated[str, typer.Argument(help="The user.")],
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Enable a disabled user again."""
    _set_active(name, True, as_json, data_dir)


@tokens_app.command("create")
def create_token(
    user: Annotated[str, typer.Argument(help="The user (added with --role if it is not yet).")],
    role: RoleOpt = None,
    adapter: AdapterOpt = None,
    expires: Annotated[
        str, typer.Option("--expires", help="How long it works: 90d, 12h, 4w, or never.")
    ] = "90d",
    permissions: Annotated[
        str | None,
        typer.Option(
            "--permissions",
            help="Comma-separated, narrower than the role (a scraper: overview.read).",
        ),
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="What it is for (a host, a scraper).")
    ] = None,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a token and print it once (first line, or "token" in --json).

    With --role (and --adapter for a sender) a user that does not exist yet is added first.
    """
    from broker import access_events
    from broker.errors import AccessError
    from broker.store.credentials import add_user as run_add
    from broker.store.credentials import create_token as run_create
    from broker.store.credentials import list_users as run_list

    now = time.time()
    expires_at = parse_expiry(expires, now)
    wanted = [p.strip() for p in permissions.split(",") if p.strip()] if permissions else None
    engine = _engine(data_dir)
    who = _who()
    existing = {u["name"]: u for u in run_list(engine)}.get(user)
    try:
        if existing is None:
            if role is None:
                fail(f"no user {user!r}: add it (`passerelle users add`) or give --role")
            run_add(engine, user, role, adapter=adapter, by=who, now=now)
            access_events.record("user_added", who, user=user, role=role, adapter=adapter)
        elif (role is not None and role != existing["role"]) or (
            adapter is not None and adapter != existing["adapter"]
        ):
            bound = f", adapter {existing['adapter']}" if existing["adapter"] else ""
            fail(
                f"user {user!r} has the role {existing['role']}{bound}: a token has its "
                "user's role (omit --role and --adapter)"
            )
        made, shown = run_create(
            engine, user, by=who, now=now, expires_at=expires_at, permissions=wanted, label=label
        )
    except AccessError as exc:
        fail(str(exc))
    access_events.record(
        "token_created",
        who,
        user=user,
        token_id=made.id,
        role=shown["role"],
        permissions=" ".join(shown["permissions"]) if shown["permissions"] else None,
    )
    if as_json:
        print_json({"token": made.token, **_times(shown)})
        return
    typer.echo(made.token)
    scope = ", ".join(shown["permissions"]) if shown["permissions"] else f"role {shown['role']}"
    typer.echo(
        f"token {made.id} for {user} ({scope}), expires {_iso(expires_at) or 'never'}. "
        "Store it now: it is not shown again (Passerelle keeps only its SHA-256).",
        err=True,
    )


@tokens_app.command("list")
def list_tokens(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's.")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="Revoked ones too.")] = False,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Tokens (id, user, role, expiry, last use), never the tokens themselves."""
    from broker.store.credentials import list_tokens as run_list

    found = [_times(t) for t in run_list(_engine(data_dir), user=user, revoked=revoked)]
    if as_json:
        print_json(found)
        return
    now = _iso(time.time()) or ""
    for token in found:
        if token["revoked_at"]:
            state = f"revoked {token['revoked_at']}"
        elif token["expires_at"] and token["expires_at"] <= now:
            state = f"expired {token['expires_at']}"
        else:
            state = f"expires {token['expires_at'] or 'never'}"
        scope = ",".join(token["permissions"]) if token["permissions"] else token["role"]
        typer.echo(
            f"{token['id']}  {token['user']}  {scope}  {state}  "
            f"last used {token['last_used_at'] or 'never'}"
            + (f"  {token['label']}" if token["label"] else "")
        )


@tokens_app.command("revoke")
def revoke_token(
    token_id: Annotated[str, typer.Argument(help="The token's id, as `tokens list` shows it.")],
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a token for good; the API refuses it within a few seconds."""
    from broker import access_events
    from broker.access import REVOCATION_DELAY_S
    from broker.errors import AccessError
    from broker.store.credentials import revoke_token as run_revoke

    who = _who()
    try:
        token = run_revoke(_engine(data_dir), token_id, by=who, now=time.time())
    except AccessError as exc:
        fail(str(exc))
    access_events.record("token_revoked", who, user=token["user"], token_id=token_id)
    if as_json:
        print_json(_times(token))
        return
    typer.echo(
        f"revoked {token_id} ({token['user']}); the API refuses it within {REVOCATION_DELAY_S:g} s"
    )
