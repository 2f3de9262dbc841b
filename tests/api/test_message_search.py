"""``/api/messages``: search and trace the message store; one envelope from Redis, then the store."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker import keys
from broker.api import create_app
from broker.store import stored_envelope

TOKEN = "synthetic-store-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(written):
    broker, patient = written
    settings = broker.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with TestClient(create_app(settings, client=broker.client)) as client:
        yield client, broker, patient


class TestApi:
    def test_search_and_trace(self, api):
        """``GET /api/messages?patient=CIN`` then ``/api/messages/{id}/trace``."""
        client, _, patient = api
        reply = client.get("/api/messages", params={"patient": patient.cin}, headers=AUTH)
        assert reply.status_code == 200
        (item,) = reply.json()["items"]
        assert item["control_id"] == "CL-1"
        traced = client.get(f"/api/messages/{item['id']}/trace", headers=AUTH).json()
        assert {d["subscriber"]: d["state"] for d in traced["deliveries"]} == {
            "dmp-national": "delivered",
            "lab-legacy": "delivered",
        }
        assert traced["raw"].startswith("MSH|")

    def test_routes_need_the_token(self, api):
        """Search and trace answer 401 without the bearer token."""
        client, _, _ = api
        assert client.get("/api/messages").status_code == 401
        assert client.get("/api/messages/x/trace").status_code == 401

    def test_an_envelope_gone_from_redis_is_read_from_the_store(self, api):
        """``GET /api/messages/{id}``: the store (with a header) once the writer dropped it from
        Redis (delivered to both), Redis while it has it (put back as the store rebuilds it)."""
        client, broker, _ = api
        (item,) = client.get("/api/messages", params={"control_id": "CL-1"}, headers=AUTH).json()[
            "items"
        ]
        assert not broker.client.exists(keys.envelope(item["id"]))
        first = client.get(f"/api/messages/{item['id']}", headers=AUTH)
        assert first.status_code == 200
        assert first.headers["x-passerelle-source"] == "store"
        rebuilt = stored_envelope(broker.store, item["id"])
        assert rebuilt is not None
        broker.client.set(keys.envelope(item["id"]), rebuilt.model_dump_json())
        second = client.get(f"/api/messages/{item['id']}", headers=AUTH)
        assert "x-passerelle-source" not in second.headers
        assert second.json()["bundle"] == first.json()["bundle"]
        assert client.get("/api/messages/" + "0" * 28, headers=AUTH).status_code == 404

    def test_bad_filters_are_clear_errors(self, api):
        """A bad time or cursor: 422 with a sentence, never a 500."""
        client, _, _ = api
        reply = client.get("/api/messages", params={"since": "soon"}, headers=AUTH)
        assert reply.status_code == 422
        assert "since" in reply.json()["detail"]
        reply = client.get("/api/messages", params={"before": "nonsense"}, headers=AUTH)
        assert reply.status_code == 422
