"""Users and tokens in the store, and the checks of a presented token (SQLite and PostgreSQL).

The token is never in the database, only its SHA-256; a wrong secret with a real id, a revoked
or expired token and a disabled user are refused, a revocation within REVOCATION_DELAY_S (the
authenticator's clock is the test's, no waiting).
"""

from __future__ import annotations

import hashlib
import time

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from broker.access import REVOCATION_DELAY_S, Authenticator, CredentialRefused
from broker.errors import AccessError, ServiceUnavailable
from broker.roles import permissions_of
from broker.settings import Settings
from broker.store.credentials import (
    add_user,
    create_token,
    list_tokens,
    list_users,
    revoke_token,
    set_active,
)
from broker.store.schema import tokens, users
from broker.tokens import token_id
from tests.auth.conftest import token_for

BOOTSTRAP = "synthetic-bootstrap-token"


class Clock:
    """The authenticator's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="clock")
def fixture_clock() -> Clock:
    return Clock()


@pytest.fixture(name="checker")
def fixture_checker(store_url: str, engine: sa.Engine, clock: Clock) -> Authenticator:
    settings = Settings(store_url=store_url, api_token=SecretStr(BOOTSTRAP))
    checker = Authenticator(settings, clock=clock)
    yield checker
    checker.close()


def _everything_stored(engine: sa.Engine) -> str:
    """Every value of every row of the users and tokens tables, as one text."""
    with engine.connect() as connection:
        rows = [*connection.execute(sa.select(users)), *connection.execute(sa.select(tokens))]
    return "\n".join(repr(tuple(row)) for row in rows)


def test_the_database_holds_the_tokens_sha256_never_the_token(engine: sa.Engine) -> None:
    token = token_for(engine, "amina.benali", "operator")
    stored = _everything_stored(engine)
    secret = token.rsplit("_", 1)[1]
    assert token not in stored
    assert secret not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert token_id(token) in stored  # the public id, to find it and to name it


def test_a_token_opens_with_its_users_role_and_names_the_user(
    checker: Authenticator, engine: sa.Engine
) -> None:
    principal = checker.bearer(token_for(engine, "youssef.alaoui", "auditor"))
    assert (principal.who, principal.role) == ("youssef.alaoui", "auditor")
    assert principal.permissions == permissions_of("auditor")
    assert not principal.may("messages.replay")


def test_the_bootstrap_token_is_an_admin_without_the_store(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path / "nothing", api_token=SecretStr(BOOTSTRAP))
    principal = Authenticator(settings).bearer(BOOTSTRAP)
    assert (principal.who, principal.role, principal.credential) == ("api", "admin", "bootstrap")
    assert principal.may("users.manage")


def test_a_real_id_with_another_secret_is_refused(
    checker: Authenticator, engine: sa.Engine
) -> None:
    token = token_for(engine, "amina.benali", "operator")
    forged = token[: -len("x")] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(CredentialRefused, match="invalid API token"):
        checker.bearer(forged)
    assert checker.bearer(token).who == "amina.benali"


@pytest.mark.parametrize("presented", ["", "nope", "pas_", "pas_0123456789ab_short"])
def test_malformed_tokens_are_refused_without_a_lookup(checker, presented) -> None:
    with pytest.raises(CredentialRefused, match="invalid API token"):
        checker.bearer(presented)


def test_a_revoked_token_is_refused_within_the_revocation_delay(
    checker: Authenticator, engine: sa.Engine, clock: Clock
) -> None:
    token = token_for(engine, "amina.benali", "operator")
    assert checker.bearer(token).role == "operator"
    revoke_token(engine, token_id(token) or "", by="test", now=clock.now)
    clock.now += REVOCATION_DELAY_S / 2
    assert checker.bearer(token).role == "operator"  # the cached verdict, at most the delay
    clock.now += REVOCATION_DELAY_S / 2
    with pytest.raises(CredentialRefused, match="has been revoked"):
        checker.bearer(token)


def test_an_expired_token_is_refused_at_its_expiry_even_when_cached(
    checker: Authenticator, engine: sa.Engine, clock: Clock
) -> None:
    token = token_for(engine, "amina.benali", "operator", expires_at=clock.now + 60)
    assert checker.bearer(token).who == "amina.benali"
    clock.now += 60
    with pytest.raises(CredentialRefused, match="has expired"):
        checker.bearer(token)
    checker.forget()
    with pytest.raises(CredentialRefused, match="has expired"):
        checker.bearer(token)


def test_a_disabled_users_tokens_are_refused_and_work_again_once_enabled(
    checker: Authenticator, engine: sa.Engine, clock: Clock
) -> None:
    token = token_for(engine, "amina.benali", "operator")
    set_active(engine, "amina.benali", False, by="test", now=clock.now)
    with pytest.raises(CredentialRefused, match="is disabled"):
        checker.bearer(token)
    set_active(engine, "amina.benali", True, by="test", now=clock.now)
    clock.now += REVOCATION_DELAY_S
    assert checker.bearer(token).who == "amina.benali"


def test_a_narrowed_token_holds_only_what_it_was_given(
    checker: Authenticator, engine: sa.Engine
) -> None:
    token = token_for(engine, "prometheus", "auditor", permissions=["overview.read"])
    principal = checker.bearer(token)
    assert principal.permissions == frozenset({"overview.read"})
    assert not principal.may("messages.read")


def test_a_token_cannot_be_wider_than_its_role(engine: sa.Engine) -> None:
    add_user(engine, "nadia.idrissi", "auditor", adapter=None, by="test", now=time.time())
    for wanted, reason in (
        (["messages.replay"], "does not hold 'messages.replay'"),
        (["everything"], "unknown permission 'everything'"),
    ):
        with pytest.raises(AccessError, match=reason):
            create_token(
                engine,
                "nadia.idrissi",
                by="t",
                now=time.time(),
                expires_at=None,
                permissions=wanted,
            )


def test_a_sender_is_bound_to_its_adapter(checker: Authenticator, engine: sa.Engine) -> None:
    token = token_for(engine, "labo-casa", "sender", adapter="labo-casa-oru")
    principal = checker.bearer(token)
    assert (principal.role, principal.adapter) == ("sender", "labo-casa-oru")
    assert principal.permissions == frozenset({"inbound.post"})
    with pytest.raises(AccessError, match="give --adapter"):
        add_user(engine, "labo-rabat", "sender", adapter=None, by="t", now=time.time())
    with pytest.raises(AccessError, match="only a sender is bound"):
        add_user(engine, "karim", "operator", adapter="labo-casa-oru", by="t", now=time.time())


def test_use_is_recorded_to_the_minute(checker: Authenticator, engine: sa.Engine) -> None:
    token = token_for(engine, "amina.benali", "operator")
    assert list_tokens(engine)[0]["last_used_at"] is None
    checker.bearer(token)
    used = list_tokens(engine)[0]["last_used_at"]
    assert used is not None
    assert used % 60 == 0


def test_lists_show_users_and_tokens_never_a_secret(engine: sa.Engine) -> None:
    token = token_for(engine, "amina.benali", "operator")
    revoked = token_for(engine, "labo-casa", "sender", adapter="labo-casa-oru")
    revoke_token(engine, token_id(revoked) or "", by="test", now=time.time())
    assert [(u["name"], u["tokens"]) for u in list_users(engine)] == [
        ("amina.benali", 1),
        ("labo-casa", 0),
    ]
    assert [t["id"] for t in list_tokens(engine)] == [token_id(token)]
    everything = list_tokens(engine, revoked=True)
    assert {t["id"] for t in everything} == {token_id(token), token_id(revoked)}
    assert token not in repr(everything)
    assert "digest" not in everything[0]


def test_user_and_token_changes_refuse_what_cannot_be(engine: sa.Engine) -> None:
    now = time.time()
    add_user(engine, "amina.benali", "operator", adapter=None, by="t", now=now)
    cases = [
        (
            lambda: add_user(engine, "amina.benali", "admin", adapter=None, by="t", now=now),
            "already",
        ),
        (
            lambda: add_user(engine, "Amina Benali", "admin", adapter=None, by="t", now=now),
            "user name",
        ),
        (lambda: add_user(engine, "x", "superuser", adapter=None, by="t", now=now), "unknown role"),
        (lambda: set_active(engine, "nobody", False, by="t", now=now), "no user 'nobody'"),
        (lambda: revoke_token(engine, "0123456789ab", by="t", now=now), "no token"),
        (lambda: revoke_token(engine, "drop table", by="t", now=now), "not a token id"),
        (lambda: create_token(engine, "nobody", by="t", now=now, expires_at=None), "no user"),
        (
            lambda: create_token(engine, "amina.benali", by="t", now=now, expires_at=now - 1),
            "expire in the future",
        ),
    ]
    for action, reason in cases:
        with pytest.raises(AccessError, match=reason):
            action()
    set_active(engine, "amina.benali", False, by="t", now=now)
    with pytest.raises(AccessError, match="is disabled"):
        create_token(engine, "amina.benali", by="t", now=now, expires_at=None)


def test_a_store_without_the_tables_is_a_503_not_a_refusal(tmp_path) -> None:
    """A token of Passerelle's shape and no usable store: the check cannot be made (503),
    which says so; the bootstrap token still works."""
    settings = Settings(data_dir=tmp_path / "empty", api_token=SecretStr(BOOTSTRAP))
    checker = Authenticator(settings)
    with pytest.raises(ServiceUnavailable, match="credentials cannot be checked"):
        checker.bearer("pas_0123456789ab_" + "A" * 43)
    assert checker.bearer(BOOTSTRAP).role == "admin"
