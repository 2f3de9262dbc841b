"""``/api/consent`` and ``/api/policy/explain`` on a broker whose one ADT (CL-1) was delivered."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

TOKEN = "synthetic-policy-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CIN = "https://passerelle.ma/fhir/sid/cin"


@pytest.fixture
def api(written):
    from broker.api import create_app

    broker, patient = written
    settings = broker.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with TestClient(create_app(settings, client=broker.client)) as client:
        yield client, broker, patient


def _message_id(client) -> str:
    reply = client.get("/api/messages", params={"control_id": "CL-1"}, headers=AUTH)
    return reply.json()["items"][0]["id"]


def test_consent_add_list_revoke_and_explain(api):
    client, _, patient = api
    message = _message_id(client)
    explained = client.get(
        "/api/policy/explain",
        params={"message": message, "subscriber": "dmp-national"},
        headers=AUTH,
    ).json()
    assert explained["sent"] is True
    assert explained["payload"]["type"] == "transaction"
    body = {"system": CIN, "value": patient.cin, "action": "block", "reason": "opposition",
            "subscriber": "dmp-national"}  # fmt: skip
    added = client.post("/api/consent", json=body, headers=AUTH)
    assert added.status_code == 201
    entry = added.json()
    assert entry["who"] == "api"
    listed = client.get("/api/consent", params={"value": patient.cin}, headers=AUTH).json()
    assert [c["id"] for c in listed] == [entry["id"]]
    explained = client.get(
        "/api/policy/explain",
        params={"message": message, "subscriber": "dmp-national"},
        headers=AUTH,
    ).json()
    assert explained["sent"] is False
    assert entry["id"] in explained["reason"]
    assert [c["id"] for c in explained["consents"]] == [entry["id"]]
    revoked = client.post(f"/api/consent/{entry['id']}/revoke", headers=AUTH)
    assert revoked.status_code == 200
    assert client.post(f"/api/consent/{entry['id']}/revoke", headers=AUTH).status_code == 409
    assert client.post("/api/consent/nope/revoke", headers=AUTH).status_code == 404


def test_routes_need_the_token_and_declare_their_permission(api):
    client, _, _ = api
    assert client.get("/api/consent").status_code == 401
    assert client.post("/api/consent", json={}).status_code == 401
    assert client.get("/api/policy/explain").status_code == 401
    paths = client.app.openapi()["paths"]
    assert paths["/api/consent"]["get"]["x-permission"] == "policy.read"
    assert paths["/api/consent"]["post"]["x-permission"] == "policy.write"
    assert paths["/api/consent/{consent_id}/revoke"]["post"]["x-permission"] == "policy.write"
    assert paths["/api/policy/explain"]["get"]["x-permission"] == "policy.read"


def test_unknown_subscriber_or_message_is_404(api):
    client, _, _ = api
    message = _message_id(client)
    reply = client.get(
        "/api/policy/explain", params={"message": message, "subscriber": "nobody"}, headers=AUTH
    )
    assert reply.status_code == 404
    reply = client.get(
        "/api/policy/explain",
        params={"message": "nope", "subscriber": "dmp-national"},
        headers=AUTH,
    )
    assert reply.status_code == 404
