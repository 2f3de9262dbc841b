"""People's passwords in the store and their checks (SQLite and PostgreSQL): kept as Argon2id
only, right/wrong/unknown/disabled, one KDF run whatever the outcome, re-hashed when the
parameters were raised, and a new password ending the old one's sessions."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from pydantic import SecretStr

import broker.passwords
from broker.access import (
    REVOCATION_DELAY_S,
    Authenticator,
    CredentialRefused,
    Session,
    open_session,
    read_session,
)
from broker.errors import AccessError
from broker.passwords import CURRENT, Parameters, hash_password, parameters_of
from broker.roles import permissions_of
from broker.settings import Settings
from broker.store.credentials import (
    add_user,
    find_password,
    list_users,
    rehash_password,
    set_active,
    set_password,
)
from broker.store.schema import users

BOOTSTRAP = "synthetic-bootstrap-token"
PASSWORD = "Tajine aux olives 2026"
OLD = Parameters(memory_kib=64, iterations=1, lanes=1)


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
def fixture_checker(store_url: str, engine: sa.Engine, clock: Clock) -> Iterator[Authenticator]:
    settings = Settings(store_url=store_url, api_token=SecretStr(BOOTSTRAP))
    checker = Authenticator(settings, clock=clock)
    yield checker
    checker.close()


def person(engine: sa.Engine, name: str = "amina.benali", role: str = "operator") -> str:
    """A user ``name`` with ``role`` and the password :data:`PASSWORD`; its name."""
    add_user(engine, name, role, adapter=None, by="test", now=time.time())
    set_password(engine, name, PASSWORD, now=time.time())
    return name


def stored_hash(engine: sa.Engine, name: str) -> str:
    found = find_password(engine, name)
    assert found is not None
    assert found.hash is not None
    return found.hash


def test_the_store_keeps_an_argon2id_phc_string_never_the_password(engine: sa.Engine) -> None:
    person(engine)
    with engine.connect() as connection:
        everything = "\n".join(repr(tuple(r)) for r in connection.execute(sa.select(users)))
    assert PASSWORD not in everything
    assert stored_hash(engine, "amina.benali").startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert [(u["name"], u["password"]) for u in list_users(engine)] == [("amina.benali", True)]


def test_the_right_password_opens_with_the_users_role(
    checker: Authenticator, engine: sa.Engine
) -> None:
    person(engine, "youssef.alaoui", "auditor")
    principal = checker.password("youssef.alaoui", PASSWORD)
    assert (principal.who, principal.role) == ("youssef.alaoui", "auditor")
    assert principal.permissions == permissions_of("auditor")
    found = find_password(engine, "youssef.alaoui")
    assert found is not None
    assert principal.credential == f"password:{found.id}"


@pytest.mark.parametrize(
    ("name", "password", "reason"),
    [
        pytest.param("amina.benali", "Tajine aux olives 2025", "wrong password", id="wrong"),
        pytest.param("amina.benali", "", "wrong password", id="empty"),
        pytest.param("nobody.here", PASSWORD, "unknown user", id="unknown"),
        pytest.param("karim.bennani", PASSWORD, "the user has no password", id="no-password"),
        pytest.param("x" * 300, PASSWORD, "unknown user", id="overlong-name"),
    ],
)
def test_what_is_refused_and_why(
    checker: Authenticator, engine: sa.Engine, name: str, password: str, reason: str
) -> None:
    person(engine)
    add_user(engine, "karim.bennani", "operator", adapter=None, by="test", now=time.time())
    with pytest.raises(CredentialRefused) as refused:
        checker.password(name, password)
    assert str(refused.value) == reason


def test_a_disabled_user_cannot_log_in_until_enabled(
    checker: Authenticator, engine: sa.Engine
) -> None:
    person(engine)
    set_active(engine, "amina.benali", False, by="test", now=time.time())
    with pytest.raises(CredentialRefused, match=r"the user amina\.benali is disabled"):
        checker.password("amina.benali", PASSWORD)
    set_active(engine, "amina.benali", True, by="test", now=time.time())
    assert checker.password("amina.benali", PASSWORD).who == "amina.benali"


def test_a_sender_has_no_password(checker: Authenticator, engine: sa.Engine) -> None:
    add_user(engine, "labo-casa", "sender", adapter="labo-casa-oru", by="test", now=time.time())
    with pytest.raises(AccessError, match="uses its token, never a password"):
        set_password(engine, "labo-casa", PASSWORD, now=time.time())
    with pytest.raises(CredentialRefused, match="no password"):
        checker.password("labo-casa", PASSWORD)


def test_set_password_refuses_with_the_policys_reason(engine: sa.Engine) -> None:
    add_user(engine, "amina.benali", "operator", adapter=None, by="test", now=time.time())
    for password, reason in (("court", "at least 12"), ("amina.benali!!", "user's name")):
        with pytest.raises(AccessError, match=reason):
            set_password(engine, "amina.benali", password, now=time.time())
    with pytest.raises(AccessError, match="no user 'nobody'"):
        set_password(engine, "nobody", PASSWORD, now=time.time())
    assert find_password(engine, "amina.benali").hash is None  # type: ignore[union-attr]


class CountingArgon2id:
    """``Argon2id`` as broker.passwords uses it, counting the verifications it runs."""

    verifications = 0

    def __init__(self, **options: int | bytes) -> None:
        self._kdf = Argon2id(**options)

    def derive_phc_encoded(self, password: bytes) -> str:
        return self._kdf.derive_phc_encoded(password)

    @staticmethod
    def verify_phc_encoded(password: bytes, stored: str) -> None:
        CountingArgon2id.verifications += 1
        Argon2id.verify_phc_encoded(password, stored)


def test_every_outcome_runs_the_kdf_exactly_once(
    checker: Authenticator, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown name, a user without a password and a sender are verified against a dummy
    hash, so a login takes as long whichever name is typed."""
    person(engine)
    add_user(engine, "karim.bennani", "operator", adapter=None, by="test", now=time.time())
    add_user(engine, "labo-casa", "sender", adapter="labo-casa-oru", by="test", now=time.time())
    monkeypatch.setattr(broker.passwords, "Argon2id", CountingArgon2id)
    for name, password in (
        ("amina.benali", PASSWORD),
        ("amina.benali", "not the password"),
        ("nobody.here", PASSWORD),
        ("karim.bennani", PASSWORD),
        ("labo-casa", PASSWORD),
    ):
        before = CountingArgon2id.verifications
        with contextlib.suppress(CredentialRefused):
            checker.password(name, password)
        assert CountingArgon2id.verifications - before == 1, name


def test_a_hash_with_older_parameters_is_rehashed_at_the_next_login(
    checker: Authenticator, engine: sa.Engine
) -> None:
    """Raising the parameters: an old hash still opens, is replaced by one with today's
    parameters, and the sessions it opened stay (same password, same id)."""
    person(engine)
    current = stored_hash(engine, "amina.benali")
    assert rehash_password(engine, "amina.benali", current, hash_password(PASSWORD, OLD))
    assert parameters_of(stored_hash(engine, "amina.benali")) == OLD
    before = checker.password("amina.benali", PASSWORD)
    assert parameters_of(stored_hash(engine, "amina.benali")) == CURRENT
    after = checker.password("amina.benali", PASSWORD)
    assert before.credential == after.credential
    assert not rehash_password(engine, "amina.benali", current, "anything")  # not the hash now


def _session_of(checker: Authenticator, name: str, password: str) -> Session:
    settings = checker.settings
    _, cookie = open_session(settings, checker.password(name, password))
    session = read_session(settings, cookie)
    assert session is not None
    return session


def test_a_new_password_ends_the_old_ones_sessions_within_the_delay(
    checker: Authenticator, engine: sa.Engine, clock: Clock
) -> None:
    person(engine)
    session = _session_of(checker, "amina.benali", PASSWORD)
    assert checker.session(session).who == "amina.benali"
    set_password(engine, "amina.benali", "Harira et chebakia 2027", now=clock.now)
    clock.now += REVOCATION_DELAY_S
    with pytest.raises(CredentialRefused, match="password of this session has been changed"):
        checker.session(session)
    with pytest.raises(CredentialRefused, match="wrong password"):
        checker.password("amina.benali", PASSWORD)
    renewed = _session_of(checker, "amina.benali", "Harira et chebakia 2027")
    assert checker.session(renewed).role == "operator"


def test_disabling_a_user_ends_its_password_sessions(
    checker: Authenticator, engine: sa.Engine, clock: Clock
) -> None:
    person(engine)
    session = _session_of(checker, "amina.benali", PASSWORD)
    set_active(engine, "amina.benali", False, by="test", now=clock.now)
    clock.now += REVOCATION_DELAY_S
    with pytest.raises(CredentialRefused, match="is disabled"):
        checker.session(session)
