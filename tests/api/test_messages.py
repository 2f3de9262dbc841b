"""Tests of GET /api/messages/{envelope_id}."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker import keys
from broker.api import create_app
from broker.envelope import Envelope
from broker.settings import Settings
from broker.testing import audit_events

TOKEN = "synthetic-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WHY = {"reason": "INC-1001 checking what the lab received"}


@pytest.fixture(name="client")
def fixture_client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, api_token=SecretStr(TOKEN))
    with TestClient(create_app(settings)) as client:
        yield client


def test_stored_envelope_is_returned(client: TestClient, redis_client: redis.Redis) -> None:
    """The envelope JSON stored at pl:env:<id> is returned as it was stored."""
    envelope = Envelope(source="chu-rabat-adt", event="ADT^A01", control_id="SYN1")
    redis_client.set(keys.envelope(envelope.id), envelope.model_dump_json())
    reply = client.get(f"/api/messages/{envelope.id}", params=WHY, headers=AUTH)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert Envelope.model_validate(reply.json()) == envelope


def test_unknown_id_is_404(client: TestClient) -> None:
    """An id with no stored envelope is a 404."""
    reply = client.get("/api/messages/0123456789abcdef0123456789ab", params=WHY, headers=AUTH)
    assert reply.status_code == 404


def test_the_envelope_needs_a_reason(client: TestClient, redis_client: redis.Redis) -> None:
    """It holds the canonical message: 422 without a reason, and nothing is read or recorded."""
    envelope = Envelope(source="chu-rabat-adt", event="ADT^A01", control_id="SYN2")
    redis_client.set(keys.envelope(envelope.id), envelope.model_dump_json())
    reply = client.get(f"/api/messages/{envelope.id}", headers=AUTH)
    assert reply.status_code == 422
    assert "reason" in reply.json()["detail"]
    assert not [e for e in audit_events(redis_client) if e["action"] == "content.viewed"]


@pytest.mark.parametrize("bad_id", ["*", "a:b", "x" * 65])
def test_ids_outside_the_id_alphabet_are_404(
    client: TestClient, redis_client: redis.Redis, bad_id: str
) -> None:
    """Ids with pattern or separator characters never reach Redis and answer 404."""
    redis_client.set(keys.envelope(bad_id), "{}")
    assert client.get(f"/api/messages/{bad_id}", params=WHY, headers=AUTH).status_code == 404


def test_a_sealed_envelope_is_opened_and_a_tampered_one_is_a_clear_500(
    client: TestClient, redis_client: redis.Redis
) -> None:
    """Sealed at rest, returned as JSON; one flipped byte: 500 naming the envelope, no content."""
    envelope = Envelope(source="chu-rabat-adt", event="ADT^A01", control_id="SYN2")
    sealed = envelope.sealed()
    assert b"SYN2" not in sealed
    redis_client.set(keys.envelope(envelope.id), sealed)
    reply = client.get(f"/api/messages/{envelope.id}", params=WHY, headers=AUTH)
    assert reply.status_code == 200
    assert Envelope.model_validate(reply.json()) == envelope
    redis_client.set(keys.envelope(envelope.id), sealed[:-1] + bytes([sealed[-1] ^ 1]))
    reply = client.get(f"/api/messages/{envelope.id}", params=WHY, headers=AUTH)
    assert reply.status_code == 500
    assert f"env of {envelope.id} fails authentication" in reply.json()["detail"]
