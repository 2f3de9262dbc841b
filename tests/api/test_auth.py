"""Tests of API authentication: bearer token, secure by default."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker.api import create_app
from broker.settings import Settings

TOKEN = "synthetic-test-token"
PROTECTED = ["/metrics", "/api/queues", "/api/messages/0123456789abcdef0123456789ab"]


@pytest.fixture(name="client")
def fixture_client(redis_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, api_token=SecretStr(TOKEN))
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("path", PROTECTED)
def test_protected_routes_need_a_token(client: TestClient, path: str) -> None:
    """Without Authorization every protected route is 401 with a Bearer challenge."""
    reply = client.get(path)
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("path", PROTECTED)
def test_wrong_token_is_401(client: TestClient, path: str) -> None:
    """A token that does not match is refused."""
    reply = client.get(path, headers={"Authorization": "Bearer not-the-token"})
    assert reply.status_code == 401
    assert reply.json()["detail"] == "invalid API token"


def test_right_token_is_accepted(client: TestClient) -> None:
    """The configured token opens the protected routes."""
    reply = client.get("/api/queues", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200


def test_other_schemes_are_refused(client: TestClient) -> None:
    """Basic credentials are not a bearer token."""
    reply = client.get("/api/queues", headers={"Authorization": f"Basic {TOKEN}"})
    assert reply.status_code == 401


@pytest.mark.parametrize("path", PROTECTED)
def test_no_configured_token_means_closed(redis_url: str, path: str) -> None:
    """With no api_token configured, protected routes answer 401 and say how to configure one."""
    with TestClient(create_app(Settings(redis_url=redis_url))) as client:
        reply = client.get(path, headers={"Authorization": "Bearer anything"})
        assert reply.status_code == 401
        assert "PASSERELLE_API_TOKEN" in reply.json()["detail"]


def test_probes_need_no_token(redis_url: str) -> None:
    """/healthz and /readyz answer without a token, even when none is configured."""
    with TestClient(create_app(Settings(redis_url=redis_url))) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
