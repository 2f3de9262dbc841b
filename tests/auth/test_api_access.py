"""What a credential meets on the API and the console beyond the matrix: the 401 details, a
sender bound to its adapter, a console session carrying who and the role (and ended by a
revocation), what a role's pages show, bodies withheld from a role without messages.content."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker.api import create_app
from broker.settings import Settings
from broker.store import connect, upgrade
from broker.store.credentials import revoke_token, set_active
from broker.tokens import token_id
from tests.auth.conftest import token_for

BOOTSTRAP = "synthetic-bootstrap-token-for-access"
FHIR_ADAPTER = "chu-rabat-fhir"
PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:2.16.504.1.1", "value": "BE654321"}],
    "name": [{"family": "EL AMRANI", "given": ["Salma"]}],
    "gender": "female",
    "birthDate": "1990-04-12",
}


@pytest.fixture(name="engine")
def fixture_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    """A SQLite store (the matrix and test_credentials cover PostgreSQL's queries)."""
    engine = connect(f"sqlite:///{tmp_path / 'store.sqlite3'}", create=True)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(name="client")
def fixture_client(redis_url: str, engine: sa.Engine, tmp_path: Path) -> Iterator[TestClient]:
    """A client of the API (its lifespan run, on the session's Redis) over ``engine``."""
    settings = Settings(
        redis_url=redis_url,
        api_token=SecretStr(BOOTSTRAP),
        store_url=engine.url.render_as_string(hide_password=False),
        data_dir=tmp_path / "var",
    )
    with TestClient(create_app(settings)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_401_says_why_in_json(client: TestClient, engine: sa.Engine, redis_client) -> None:
    expired = token_for(engine, "old", "operator", expires_at=time.time() + 0.001)
    revoked = token_for(engine, "gone", "operator")
    revoke_token(engine, token_id(revoked) or "", by="test", now=time.time())
    disabled = token_for(engine, "left", "operator")
    set_active(engine, "left", False, by="test", now=time.time())
    cases = {
        None: "missing bearer token: send `Authorization: Bearer <token>`",
        "not-a-token": "invalid API token",
        expired: f"token {token_id(expired)} has expired",
        revoked: f"token {token_id(revoked)} has been revoked",
        disabled: f"the user of token {token_id(disabled)} is disabled",
    }
    for token, detail in cases.items():
        reply = client.get("/api/queues", headers=bearer(token) if token else {})
        assert reply.status_code == 401
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == {"detail": detail}
        assert reply.headers["WWW-Authenticate"] == "Bearer"


def test_the_bootstrap_token_stays_an_admin(client: TestClient, redis_client) -> None:
    assert client.get("/api/queues", headers=bearer(BOOTSTRAP)).status_code == 200
    reply = client.post("/inbound/nowhere/fhir", headers=bearer(BOOTSTRAP), json=PATIENT)
    assert reply.status_code == 404  # an admin may post as any adapter; this one does not exist


def test_a_sender_posts_only_as_its_own_adapter(
    client: TestClient, engine: sa.Engine, redis_client
) -> None:
    token = token_for(engine, "chu-rabat-his", "sender", adapter=FHIR_ADAPTER)
    own = client.post(
        f"/inbound/{FHIR_ADAPTER}/fhir",
        headers={**bearer(token), "Content-Type": "application/fhir+json"},
        json=PATIENT,
    )
    assert own.status_code == 202, own.text
    other = client.post("/inbound/labo-casa-oru/hl7v2", headers=bearer(token), content=b"MSH|")
    assert other.status_code == 403
    assert other.json() == {
        "detail": f"this token may post only as adapter {FHIR_ADAPTER!r}, not 'labo-casa-oru'"
    }
    reading = client.get("/api/queues", headers=bearer(token))
    assert reading.json() == {"detail": "the role sender lacks the permission overview.read"}


def test_a_scraper_token_reads_metrics_and_nothing_else(
    client: TestClient, engine: sa.Engine, redis_client
) -> None:
    token = token_for(engine, "prometheus", "auditor", permissions=["overview.read"])
    metrics = client.get("/metrics", headers=bearer(token))
    assert metrics.status_code == 200
    assert "# TYPE" in metrics.text
    search = client.get("/api/messages", headers=bearer(token))
    assert search.status_code == 403
    assert search.json() == {
        "detail": f"token {token_id(token)} is limited and lacks the permission messages.read"
    }


def test_a_corrected_replay_needs_messages_edit(
    client: TestClient, engine: sa.Engine, redis_client
) -> None:
    token = token_for(
        engine, "night-shift", "operator", permissions=["messages.read", "messages.replay"]
    )
    reply = client.post(
        "/api/dead-letters/dmp-national/0123456789ab/replay",
        headers=bearer(token),
        json={"why": "receiver fixed", "corrected_bundle": {"resourceType": "Bundle"}},
    )
    assert reply.status_code == 403
    assert reply.json()["detail"].endswith("lacks the permission messages.edit")
    plain = client.post(
        "/api/dead-letters/dmp-national/0123456789ab/replay",
        headers=bearer(token),
        json={"why": "receiver fixed"},
    )
    assert plain.status_code == 404  # allowed; there is no such dead letter


def _login(client: TestClient, token: str) -> str:
    reply = client.post("/console/login", data={"token": token}, follow_redirects=False)
    assert reply.status_code == 303, reply.text
    page = client.get("/console/", follow_redirects=False)
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found is not None
    return found.group(1)


def test_a_session_names_who_and_the_role_and_the_api_obeys_the_role(
    client: TestClient, engine: sa.Engine, redis_client
) -> None:
    csrf = _login(client, token_for(engine, "nadia.idrissi", "auditor"))
    page = client.get("/console/dead-letters")
    assert "<strong>nadia.idrissi</strong> (auditor)" in page.text
    assert 'id="action"' not in page.text  # no replay or discard form for an auditor
    assert '<meta name="permissions" content="' in page.text
    assert "messages.replay" not in re.search(r'name="permissions" content="([^"]*)"', page.text)[1]
    replay = client.post(
        "/api/dead-letters/dmp-national/0123456789ab/replay",
        headers={"X-CSRF-Token": csrf},
        json={"why": "trying"},
    )
    assert replay.status_code == 403
    assert replay.json() == {"detail": "the role auditor lacks the permission messages.replay"}
    trace = client.get("/console/messages/0123456789abcdef0123456789ab")
    assert 'id="content-form"' in trace.text  # an auditor reads content, with a reason


def test_a_token_narrowed_without_content_sees_no_bodies(
    client: TestClient, engine: sa.Engine, redis_client
) -> None:
    narrowed = ["overview.read", "messages.read"]
    _login(client, token_for(engine, "salma.tazi", "integrator", permissions=narrowed))
    trace = client.get("/console/messages/0123456789abcdef0123456789ab")
    assert 'id="raw"' not in trace.text
    assert 'id="content-form"' not in trace.text
    assert "messages.content" in trace.text  # why the bodies are not shown


def test_an_operator_sees_the_actions_and_the_bodies(
    client: TestClient, engine: sa.Engine, redis_client
) -> None:
    _login(client, token_for(engine, "karim.bennani", "operator"))
    page = client.get("/console/dead-letters")
    assert 'id="action"' in page.text
    assert 'id="edit"' in page.text
    assert 'id="raw"' in client.get("/console/messages/0123456789abcdef0123456789ab").text
    nav = client.get("/console/").text
    assert 'href="/console/unmapped"' in nav


def test_revoking_a_token_ends_its_console_sessions(
    client: TestClient, engine: sa.Engine, redis_client
) -> None:
    token = token_for(engine, "karim.bennani", "operator")
    _login(client, token)
    assert client.get("/console/", follow_redirects=False).status_code == 200
    revoke_token(engine, token_id(token) or "", by="test", now=time.time())
    client.app.state.authenticator.forget()  # as REVOCATION_DELAY_S later
    page = client.get("/console/", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/console/login")
    assert client.get("/api/overview").status_code == 401


def test_a_refused_login_names_no_one_and_opens_nothing(
    client: TestClient, engine: sa.Engine, redis_client
) -> None:
    reply = client.post("/console/login", data={"token": "pas_0123456789ab_" + "A" * 43})
    assert reply.status_code == 401
    assert "not accepted" in reply.text
    assert "passerelle_session" not in reply.headers.get("set-cookie", "")
