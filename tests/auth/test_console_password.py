"""The console's password login and the admin route that sets a password, through the real app
(TestClient, its lifespan, the session's Redis, a SQLite store): sessions, refusals, lockout,
the access events, and a new password ending the old one's sessions."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr
from structlog.testing import capture_logs

from broker.api import create_app
from broker.settings import Settings
from broker.store import connect, upgrade
from broker.store.credentials import add_user, set_active, set_password
from tests.auth.conftest import token_for

BOOTSTRAP = "synthetic-bootstrap-token-for-passwords"
PASSWORD = "Tajine aux olives 2026"
ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}


@pytest.fixture(name="engine")
def fixture_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    """A SQLite store with amina.benali (operator, :data:`PASSWORD`)."""
    engine = connect(f"sqlite:///{tmp_path / 'store.sqlite3'}", create=True)
    upgrade(engine)
    add_user(engine, "amina.benali", "operator", adapter=None, by="test", now=time.time())
    set_password(engine, "amina.benali", PASSWORD, now=time.time())
    yield engine
    engine.dispose()


@pytest.fixture(name="client")
def fixture_client(
    redis_url: str, redis_client, engine: sa.Engine, tmp_path: Path
) -> Iterator[TestClient]:
    """A client of the API (its lifespan run, on the session's emptied Redis) over ``engine``."""
    settings = Settings(
        redis_url=redis_url,
        api_token=SecretStr(BOOTSTRAP),
        store_url=engine.url.render_as_string(hide_password=False),
        data_dir=tmp_path / "var",
    )
    with TestClient(create_app(settings)) as client:
        yield client


def log_in(client: TestClient, user: str, password: str):
    return client.post(
        "/console/login",
        data={"user": user, "password": password, "next": "/console/messages"},
        follow_redirects=False,
    )


def events(logs: list[dict], kind: str) -> list[dict]:
    return [e for e in logs if e["event"] == f"access.{kind}"]


def test_the_login_page_offers_a_password_and_a_token(client: TestClient) -> None:
    page = client.get("/console/login")
    assert 'name="user"' in page.text
    assert 'name="password"' in page.text
    assert 'name="token"' in page.text
    assert page.text.count('action="/console/login"') == 2


def test_a_name_and_password_open_a_session_as_that_person(client: TestClient) -> None:
    with capture_logs() as logs:
        reply = log_in(client, "amina.benali", PASSWORD)
    assert reply.status_code == 303, reply.text
    assert reply.headers["location"] == "/console/messages"
    assert "passerelle_session" in reply.headers["set-cookie"]
    assert "<strong>amina.benali</strong> (operator)" in client.get("/console/").text
    (login,) = events(logs, "login")
    assert (login["user"], login["role"], login["method"]) == (
        "amina.benali",
        "operator",
        "password",
    )
    assert "token_id" not in login
    assert PASSWORD not in repr(logs)


@pytest.mark.parametrize(
    ("user", "password", "reason", "named"),
    [
        pytest.param("amina.benali", "Tajine aux olives 2025", "wrong password", True, id="wrong"),
        pytest.param("Tajine aux olives 2026", PASSWORD, "unknown user", False, id="unknown"),
    ],
)
def test_a_refused_login_opens_nothing_and_says_little(
    client: TestClient, user: str, password: str, reason: str, named: bool
) -> None:
    """The page says the pair is not accepted (not which half); the event says why, and names
    the user only when the name is a user's (an unknown "name" may be a mistyped password)."""
    with capture_logs() as logs:
        reply = log_in(client, user, password)
    assert reply.status_code == 401
    assert "user name and password are not accepted" in reply.text
    assert "passerelle_session" not in reply.headers.get("set-cookie", "")
    (failed,) = events(logs, "login_failed")
    assert (failed["reason"], failed["method"], failed["peer"]) == (
        reason,
        "password",
        "testclient",
    )
    assert failed.get("user") == ("amina.benali" if named else None)
    assert "Tajine" not in repr(logs)


def test_a_disabled_user_cannot_log_in(client: TestClient, engine: sa.Engine) -> None:
    set_active(engine, "amina.benali", False, by="test", now=time.time())
    with capture_logs() as logs:
        reply = log_in(client, "amina.benali", PASSWORD)
    assert reply.status_code == 401
    assert events(logs, "login_failed")[0]["reason"] == "the user amina.benali is disabled"


def test_five_failures_lock_the_name_out_even_for_the_right_password(client: TestClient) -> None:
    with capture_logs() as logs:
        for _ in range(5):
            assert log_in(client, "amina.benali", "pas le bon mot de passe").status_code == 401
        locked = log_in(client, "amina.benali", PASSWORD)
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.text
    assert "passerelle_session" not in locked.headers.get("set-cookie", "")
    (lockout,) = events(logs, "login_locked")
    assert lockout["user"] == "amina.benali"
    assert lockout["reason"] == "5 failed logins: user locked out for 60 s"
    assert events(logs, "login_failed")[-1]["reason"].startswith("user locked out for another")
    # Another person on the same address is not locked out (the address allows 20).
    add_user_with_password(client, "youssef.alaoui")
    assert log_in(client, "youssef.alaoui", PASSWORD).status_code == 303


def add_user_with_password(client: TestClient, name: str) -> None:
    """Add ``name`` (auditor) through the store and give it :data:`PASSWORD` through the API."""
    engine = connect(client.app.state.settings.effective_store_url)
    add_user(engine, name, "auditor", adapter=None, by="test", now=time.time())
    engine.dispose()
    reply = client.put(f"/api/users/{name}/password", headers=ADMIN, json={"password": PASSWORD})
    assert reply.status_code == 200, reply.text


def test_a_token_still_logs_in_on_the_same_page(client: TestClient, engine: sa.Engine) -> None:
    token = token_for(engine, "labo-casa", "sender", adapter="labo-casa-oru")
    reply = client.post("/console/login", data={"token": token}, follow_redirects=False)
    assert reply.status_code == 303
    bootstrap = client.post("/console/login", data={"token": BOOTSTRAP}, follow_redirects=False)
    assert bootstrap.status_code == 303


class TestSetPassword:
    def test_an_admin_sets_a_password_and_the_old_ones_sessions_end(
        self, client: TestClient
    ) -> None:
        assert log_in(client, "amina.benali", PASSWORD).status_code == 303
        assert client.get("/console/", follow_redirects=False).status_code == 200
        with capture_logs() as logs:
            reply = client.put(
                "/api/users/amina.benali/password",
                headers=ADMIN,
                json={"password": "Harira et chebakia 2027"},
            )
        assert reply.status_code == 200, reply.text
        assert reply.json()["user"] == "amina.benali"
        assert re.match(r"^\d{4}-\d\d-\d\dT", reply.json()["password_changed_at"])
        (changed,) = events(logs, "password_set")
        assert (changed["who"], changed["user"]) == ("api", "amina.benali")
        page = client.get("/console/", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"].startswith("/console/login")
        assert log_in(client, "amina.benali", PASSWORD).status_code == 401
        assert log_in(client, "amina.benali", "Harira et chebakia 2027").status_code == 303

    @pytest.mark.parametrize(
        ("name", "body", "status", "detail"),
        [
            pytest.param("nobody", {"password": PASSWORD}, 404, "no user 'nobody'", id="unknown"),
            pytest.param(
                "amina.benali", {"password": "court"}, 422, "at least 12 characters", id="short"
            ),
            pytest.param(
                "amina.benali",
                {"password": "Amina.Benali 2026"},
                422,
                "may not be, or contain, the user's name",
                id="the-name",
            ),
            pytest.param("labo-casa", {"password": PASSWORD}, 422, "uses its token", id="a-sender"),
        ],
    )
    def test_refusals_say_why_and_never_echo_the_password(
        self, client: TestClient, engine: sa.Engine, name, body, status, detail
    ) -> None:
        add_user(engine, "labo-casa", "sender", adapter="labo-casa-oru", by="t", now=time.time())
        reply = client.put(f"/api/users/{name}/password", headers=ADMIN, json=body)
        assert reply.status_code == status
        assert detail in reply.json()["detail"]
        assert body["password"] not in reply.text
        assert log_in(client, "amina.benali", PASSWORD).status_code == 303  # unchanged

    def test_only_users_manage_may_set_a_password(
        self, client: TestClient, engine: sa.Engine
    ) -> None:
        operator = token_for(engine, "karim.bennani", "operator")
        reply = client.put(
            "/api/users/amina.benali/password",
            headers={"Authorization": f"Bearer {operator}"},
            json={"password": "Harira et chebakia 2027"},
        )
        assert reply.status_code == 403
        assert reply.json() == {"detail": "the role operator lacks the permission users.manage"}
        assert log_in(client, "amina.benali", PASSWORD).status_code == 303
