"""The role matrix: every route of the API (its OpenAPI schema) and every console page, for no
credential and for each role, against the permission the route declares (docs/security.md).

- no credential: 401 (a page: to the login page); the probes, the login page and the docs are
  the only public routes, and :data:`PUBLIC` names them all;
- a role without the route's permission: 403 whose detail names the permission;
- a role holding it: neither 401 nor 403 (2xx, or a 4xx of the request itself: an unknown id,
  an empty body).

:data:`EXPECTED` pins every route's permission: a new route, or a changed one, fails here until
it is reviewed against docs/security.md and written down.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker.api import create_app
from broker.guard import ANY_ROLE, PUBLIC, declared, routes_of
from broker.roles import GRANTS, ROLES
from broker.settings import Settings
from broker.store import connect, upgrade
from tests.auth.conftest import token_for

BOOTSTRAP = "synthetic-bootstrap-token-for-the-matrix"
SENDER_ADAPTER = "chu-rabat-fhir"
"""The sender's adapter: an inbound http FHIR adapter of the repository's registrations."""
VALUES = {
    "envelope_id": "0123456789abcdef0123456789ab",
    "subscriber": "dmp-national",
    "dead_id": "0123456789ab",
    "adapter": "chu-rabat-adt",
    "adapter_id": SENDER_ADAPTER,
    "entry_id": "1-0",
    "consent_id": "0123456789abcdef0123456789ab",
    "language": "fr",
    "name": "nobody-here",
}
EXPECTED = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): "overview.read",
    ("GET", "/api/queues"): "overview.read",
    ("GET", "/api/overview"): "overview.read",
    ("GET", "/api/messages"): "messages.read",
    ("GET", "/api/messages/{envelope_id}/trace"): "messages.read",
    ("GET", "/api/messages/{envelope_id}"): "messages.content",
    ("POST", "/api/messages/{envelope_id}/resend"): "messages.replay",
    ("GET", "/api/dead-letters"): "messages.read",
    ("GET", "/api/dead-letters/{subscriber}"): "messages.read",
    ("GET", "/api/dead-letters/{subscriber}/{dead_id}"): "messages.content",
    ("POST", "/api/dead-letters/{subscriber}/{dead_id}/replay"): "messages.replay",
    ("POST", "/api/dead-letters/{subscriber}/{dead_id}/discard"): "messages.replay",
    ("POST", "/api/dead-letters/{subscriber}/replay"): "messages.replay",
    ("GET", "/api/unmapped/{adapter}"): "config.read",
    ("GET", "/api/rejected"): "messages.read",
    ("GET", "/api/rejected/{entry_id}"): "messages.content",
    ("GET", "/api/quarantine"): "messages.read",
    ("GET", "/api/consent"): "policy.read",
    ("POST", "/api/consent"): "policy.write",
    ("POST", "/api/consent/{consent_id}/revoke"): "policy.write",
    ("GET", "/api/policy/explain"): "policy.read",
    ("GET", "/api/audit"): "audit.read",
    ("GET", "/api/audit/verify"): "audit.read",
    ("GET", "/api/audit/export"): "audit.read",
    ("POST", "/inbound/{adapter_id}/hl7v2"): "inbound.post",
    ("POST", "/inbound/{adapter_id}/fhir"): "inbound.post",
    ("PUT", "/api/users/{name}/password"): "users.manage",
    ("GET", "/docs"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/console/login"): PUBLIC,
    ("POST", "/console/login"): PUBLIC,
    ("GET", "/console/lang/{language}"): PUBLIC,
    ("POST", "/console/logout"): ANY_ROLE,
    ("GET", "/console/"): "overview.read",
    ("GET", "/console/messages"): "messages.read",
    ("GET", "/console/dead-letters"): "messages.read",
    ("GET", "/console/refusals"): "messages.read",
    ("GET", "/console/unmapped"): "config.read",
    ("GET", "/console/messages/{envelope_id}"): "messages.read",
}
"""Every route's permission (the table of docs/security.md, "Who may do what")."""


def _routes(app: FastAPI) -> dict[tuple[str, str], str]:
    """What every API route of the app declares, by (method, path)."""
    table: dict[tuple[str, str], str] = {}
    for route in routes_of(app):
        if isinstance(route.original_route, APIRoute):
            for method in route.methods or ():
                table[(method, str(route.path))] = declared(route)
    return table


def _path(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: VALUES[m.group(1)], template)


@pytest.fixture(name="world", scope="module")
def fixture_world(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A client of the API over the session's Redis and a SQLite store holding one token per
    role; each test starts without cookies (one client: the inbound edge's asyncio Redis client
    lives on its event loop)."""
    directory: Path = tmp_path_factory.mktemp("matrix")
    store_url = f"sqlite:///{directory / 'store.sqlite3'}"
    engine = connect(store_url, create=True)
    upgrade(engine)
    tokens = {
        role: token_for(
            engine, f"{role}-user", role, adapter=SENDER_ADAPTER if role == "sender" else None
        )
        for role in ROLES
    }
    engine.dispose()
    settings = Settings(
        redis_url=redis_url,
        api_token=SecretStr(BOOTSTRAP),
        store_url=store_url,
        data_dir=directory / "var",
    )
    with TestClient(create_app(settings)) as client:  # the lifespan: configuration, inbound edge
        yield client, tokens


def _call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> Any:
    if method in ("POST", "PUT"):
        return client.request(method, path, headers=headers, json={})
    return client.request(method, path, headers=headers, follow_redirects=False)


def test_every_route_declares_the_permission_the_table_gives(world) -> None:
    client, _ = world
    assert _routes(client.app) == EXPECTED
    assert {p for p in EXPECTED.values() if p not in (PUBLIC, ANY_ROLE)} <= set(GRANTS)


def test_the_openapi_schema_shows_each_operations_permission(world) -> None:
    client, _ = world
    schema = client.get("/openapi.json").json()
    operations = {
        (method.upper(), path): operation["x-permission"]
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }
    assert operations == {k: v for k, v in EXPECTED.items() if k in operations}
    assert len(operations) == 29  # every API route; pages and docs are not in the schema


def _api_routes(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, path, permission) of every operation in the OpenAPI schema."""
    schema = app.openapi()
    return [
        (method.upper(), path, operation["x-permission"])
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]


def _pages(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, path, permission) of every console page (not in the schema: from app.routes)."""
    return [
        (method, path, permission)
        for (method, path), permission in _routes(app).items()
        if path.startswith("/console") and permission != PUBLIC
    ]


def test_without_credentials_every_api_route_is_401_but_the_public_ones(world) -> None:
    client, _ = world
    client.cookies.clear()
    wrong: list[str] = []
    for method, path, permission in _api_routes(client.app):
        reply = _call(client, method, _path(path), {})
        expected = 200 if permission == PUBLIC else 401
        if reply.status_code != expected:
            wrong.append(f"{method} {path}: {reply.status_code}, expected {expected}")
        elif expected == 401:
            assert reply.json() == {
                "detail": "missing bearer token: send `Authorization: Bearer <token>`"
            }
            assert reply.headers["WWW-Authenticate"] == "Bearer"
        bad = _call(client, method, _path(path), {"Authorization": "Bearer pas_nope"})
        if permission != PUBLIC and bad.status_code != 401:
            wrong.append(f"{method} {path} with a bad token: {bad.status_code}")
    assert wrong == []


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_the_api_routes_its_permissions_allow(world, role: str) -> None:
    client, tokens = world
    client.cookies.clear()
    headers = {"Authorization": f"Bearer {tokens[role]}"}
    wrong: list[str] = []
    for method, path, permission in _api_routes(client.app):
        if permission == PUBLIC:
            continue
        reply = _call(client, method, _path(path), headers)
        holds = role in GRANTS[permission]
        if holds and reply.status_code in (401, 403):
            wrong.append(f"{method} {path}: {reply.status_code} {reply.text[:120]}")
        if not holds:
            detail = f"the role {role} lacks the permission {permission}"
            if (reply.status_code, reply.json().get("detail")) != (403, detail):
                wrong.append(f"{method} {path}: {reply.status_code} {reply.text[:120]}")
    assert wrong == []


def _login(client: TestClient, token: str) -> str:
    """Log the client in with ``token``; the CSRF token of its session."""
    reply = client.post(
        "/console/login", data={"token": token, "next": "/console/"}, follow_redirects=False
    )
    assert reply.status_code == 303, reply.text
    page = client.get("/console/", follow_redirects=False)  # 200, or the 403 page: both embed it
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found is not None
    return found.group(1)


def test_without_a_session_every_console_page_goes_to_the_login_page(world) -> None:
    client, _ = world
    client.cookies.clear()
    for method, path, _permission in _pages(client.app):
        reply = client.request(method, _path(path), follow_redirects=False)
        assert reply.status_code == 303, f"{method} {path}"
        assert reply.headers["location"].startswith("/console/login?next=")


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_the_console_pages_its_permissions_allow(world, role: str) -> None:
    client, tokens = world
    client.cookies.clear()
    wrong: list[str] = []
    csrf = _login(client, tokens[role])
    for method, path, permission in _pages(client.app):
        if method == "POST":
            continue  # logout, below
        reply = client.request(method, _path(path), follow_redirects=False)
        holds = permission == ANY_ROLE or role in GRANTS[permission]
        expected = 200 if holds else 403
        if reply.status_code != expected:
            wrong.append(f"{method} {path}: {reply.status_code}, expected {expected}")
        elif not holds:
            assert f"<code>{permission}</code>" in reply.text
    out = client.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
    assert (out.status_code, out.headers["location"]) == (303, "/console/login")
    assert wrong == []


def test_the_sender_may_log_in_and_log_out_yet_sees_no_page(world) -> None:
    client, tokens = world
    client.cookies.clear()
    reply = client.post("/console/login", data={"token": tokens["sender"]}, follow_redirects=False)
    assert reply.status_code == 303
    page = client.get("/console/", follow_redirects=False)
    assert page.status_code == 403
    assert "sender-user" in page.text
    for link in ("/console/messages", "/console/dead-letters", "/console/unmapped"):
        assert f'href="{link}"' not in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    out = client.post("/console/logout", data={"csrf": csrf.group(1)}, follow_redirects=False)
    assert out.status_code == 303


def test_the_tables_roles_and_permissions_are_the_shared_vocabulary() -> None:
    """PERMS.md of issue 10, as broker.roles holds it."""
    assert ROLES == ("admin", "integrator", "operator", "auditor", "sender")
    assert {p: sorted(r) for p, r in GRANTS.items()} == {
        "overview.read": ["admin", "auditor", "integrator", "operator"],
        "messages.read": ["admin", "auditor", "integrator", "operator"],
        "messages.content": ["admin", "auditor", "integrator", "operator"],
        "messages.replay": ["admin", "operator"],
        "messages.edit": ["admin", "operator"],
        "identity.edit": ["admin"],
        "config.read": ["admin", "auditor", "integrator", "operator"],
        "config.write": ["admin", "integrator"],
        "policy.read": ["admin", "auditor", "integrator"],
        "policy.write": ["admin"],
        "audit.read": ["admin", "auditor"],
        "users.manage": ["admin"],
        "inbound.post": ["admin", "sender"],
    }
