"""The console's pages: behind the login, CSRF on actions, not in the API schema, FR and EN."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker import console
from broker.access import CSRF_HEADER, SESSION_COOKIE
from broker.api import create_app
from broker.console import LOGIN, PAGES, path_of
from broker.settings import Settings

TOKEN = "synthetic-console-token"
PUBLIC = {
    ("GET", "/"): "leads to the console (then to the login page)",
    ("GET", LOGIN): "the login form",
    ("POST", LOGIN): "checks the token",
    ("GET", "/console/lang/{language}"): "the language switch (a cookie, no data)",
}
"""The console's routes reachable without a session, each deliberately."""


@pytest.fixture(name="app")
def fixture_app(redis_url: str) -> FastAPI:
    return create_app(Settings(redis_url=redis_url, api_token=SecretStr(TOKEN)))


@pytest.fixture(name="client")
def fixture_client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, follow_redirects=False) as client:
        yield client


def log_in(client: TestClient) -> str:
    """Log in; return the page's CSRF token."""
    reply = client.post(LOGIN, data={"token": TOKEN, "next": "/console/"})
    assert reply.status_code == 303
    page = client.get("/console/")
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert match is not None
    return match.group(1)


def console_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the console's two routers, as the application serves them."""
    found = []
    for route in [*console.public.routes, *console.pages.routes]:
        assert isinstance(route, APIRoute)
        found.extend((method, route.path) for method in sorted(route.methods))
    return found


def test_every_console_route_but_the_public_ones_needs_a_session(client: TestClient) -> None:
    """Enumerated from the routers: a new page is guarded unless added to PUBLIC on purpose."""
    routes = console_routes()
    assert {("GET", path_of(page)) for page in PAGES} <= set(routes)
    guarded = [r for r in routes if r not in PUBLIC]
    assert ("POST", "/console/logout") in guarded
    for method, path in guarded:
        reply = client.request(method, path.replace("{language}", "fr"))
        assert reply.status_code == 303, (method, path)
        assert reply.headers["location"].startswith(f"{LOGIN}?next="), (method, path)
    assert set(PUBLIC) <= set(routes)


def test_the_console_is_not_in_the_api_schema(client: TestClient) -> None:
    """Pages are not API: the schema lists none of them (nor the docs pages)."""
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith(("/console", "/docs", "/redoc"))]
    assert "/api/overview" in paths


def test_the_static_files_are_served_without_a_session(client: TestClient) -> None:
    """Scripts and styles hold no data: the login page needs them before any session."""
    reply = client.get("/console/static/console.js")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/javascript")


def test_a_page_redirects_to_the_login_page_and_back(client: TestClient) -> None:
    reply = client.get("/console/dead-letters?subscriber=dmp-national")
    assert reply.status_code == 303
    target = reply.headers["location"]
    assert target == f"{LOGIN}?next=%2Fconsole%2Fdead-letters%3Fsubscriber%3Ddmp-national"
    form = client.get(target)
    assert 'value="/console/dead-letters?subscriber=dmp-national"' in form.text
    login = client.post(
        LOGIN, data={"token": TOKEN, "next": "/console/dead-letters?subscriber=dmp-national"}
    )
    assert login.headers["location"] == "/console/dead-letters?subscriber=dmp-national"


def test_a_wrong_token_is_refused_and_opens_no_session(client: TestClient) -> None:
    reply = client.post(LOGIN, data={"token": "not-the-token", "next": "/console/"})
    assert reply.status_code == 401
    assert "This token is not accepted" in reply.text
    assert SESSION_COOKIE not in reply.cookies
    assert client.get("/console/").status_code == 303


def test_the_session_cookie_is_httponly_and_strict(client: TestClient) -> None:
    reply = client.post(LOGIN, data={"token": TOKEN, "next": "/console/"})
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert TOKEN not in cookie


def test_login_never_sends_the_browser_to_another_site(client: TestClient) -> None:
    for target in ("https://evil.example/", "//evil.example/console/", "/console/\\evil"):
        reply = client.post(LOGIN, data={"token": TOKEN, "next": target})
        assert reply.headers["location"] == "/console/", target


def test_no_configured_token_means_no_login(redis_url: str) -> None:
    with TestClient(create_app(Settings(redis_url=redis_url)), follow_redirects=False) as client:
        reply = client.post(LOGIN, data={"token": "", "next": "/console/"})
        assert reply.status_code == 401
        assert "No API token is configured" in reply.text


def test_pages_carry_a_strict_content_security_policy(client: TestClient) -> None:
    log_in(client)
    for page in PAGES:
        reply = client.get(path_of(page))
        assert reply.status_code == 200, page
        policy = reply.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        # No script or style from another host, and no inline script.
        assert not re.search(r'(src|href)="(https?:)?//', reply.text), page
        assert not re.search(r"<script(?![^>]*(src=|application/json))", reply.text), page


def test_the_api_takes_the_session_for_reading(client: TestClient) -> None:
    log_in(client)
    assert client.get("/api/overview").status_code == 200
    assert client.get("/api/dead-letters").status_code == 200


def test_an_action_through_the_session_needs_the_csrf_token(client: TestClient) -> None:
    """The cookie alone (what a forged cross-site request would carry) never acts."""
    csrf = log_in(client)
    path = "/api/dead-letters/dmp-national/0123456789abcdef0123456789ab/discard"
    without = client.post(path, json={"why": "test"})
    assert without.status_code == 403
    assert "CSRF" in without.json()["detail"]
    wrong = client.post(path, json={"why": "test"}, headers={CSRF_HEADER: "forged"})
    assert wrong.status_code == 403
    right = client.post(path, json={"why": "test"}, headers={CSRF_HEADER: csrf})
    assert right.status_code == 404  # past authentication: no such dead letter


def test_logout_needs_the_csrf_token_then_ends_the_session(client: TestClient) -> None:
    csrf = log_in(client)
    assert client.post("/console/logout", data={"csrf": "forged"}).status_code == 403
    assert client.get("/console/").status_code == 200
    reply = client.post("/console/logout", data={"csrf": csrf})
    assert reply.status_code == 303
    assert reply.headers["location"] == LOGIN
    assert client.get("/console/").status_code == 303
    assert client.get("/api/overview").status_code == 401


def test_the_language_follows_accept_language_then_the_switch(client: TestClient) -> None:
    page = client.get(LOGIN, headers={"Accept-Language": "fr-MA,fr;q=0.9,en;q=0.5"})
    assert '<html lang="fr">' in page.text
    assert "Connexion à Passerelle" in page.text
    page = client.get(LOGIN, headers={"Accept-Language": "de, en;q=0.4"})
    assert '<html lang="en">' in page.text
    switched = client.get("/console/lang/fr?next=/console/login")
    assert switched.headers["location"] == "/console/login"
    assert "passerelle_lang=fr" in switched.headers["set-cookie"]
    page = client.get(LOGIN, headers={"Accept-Language": "en"})
    assert '<html lang="fr">' in page.text


def test_an_unknown_language_changes_nothing(client: TestClient) -> None:
    reply = client.get("/console/lang/xx?next=/console/")
    assert reply.status_code == 303
    assert "set-cookie" not in reply.headers


def test_the_trace_page_escapes_the_id_it_is_given(client: TestClient) -> None:
    """The id in the address goes into the page as an escaped attribute, never as markup."""
    log_in(client)
    reply = client.get('/console/messages/"><img src=x onerror=alert(1)>')
    assert reply.status_code == 200
    assert "<img" not in reply.text
    assert 'data-id="&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"' in reply.text
    # The page marks its place in the navigation: the message browser.
    assert re.search(r'href="/console/messages" aria-current="page"', reply.text)
