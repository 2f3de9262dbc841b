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
        assert traced["raw"] is None, "no content without a reason"
        assert traced["canonical"] is None
        assert "reason" in traced["content"]
        params = {"reason": "INC-4521 patient called about a missing result"}
        traced = client.get(f"/api/messages/{item['id']}/trace", params=params, headers=AUTH)
        assert traced.json()["raw"].startswith("MSH|")

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
        assert client.get(f"/api/messages/{item['id']}", headers=AUTH).status_code == 422
        reason = {"reason": "INC-4522 checking the mapping of PID-3"}
        first = client.get(f"/api/messages/{item['id']}", params=reason, headers=AUTH)
        assert first.status_code == 200
        assert first.headers["x-passerelle-source"] == "store"
        rebuilt = stored_envelope(broker.store, item["id"])
        assert rebuilt is not None
        broker.client.set(keys.envelope(item["id"]), rebuilt.model_dump_json())
        second = client.get(f"/api/messages/{item['id']}", params=reason, headers=AUTH)
        assert "x-passerelle-source" not in second.headers
        assert second.json()["bundle"] == first.json()["bundle"]
        unknown = client.get("/api/messages/" + "0" * 28, params=reason, headers=AUTH)
        assert unknown.status_code == 404

    def test_bad_filters_are_clear_errors(self, api):
        """A bad time or cursor: 422 with a sentence, never a 500."""
        client, _, _ = api
        reply = client.get("/api/messages", params={"since": "soon"}, headers=AUTH)
        assert reply.status_code == 422
        assert "since" in reply.json()["detail"]
        reply = client.get("/api/messages", params={"before": "nonsense"}, headers=AUTH)
        assert reply.status_code == 422


class TestAudited:
    """Every read of the store is in the audit trail, with what an auditor needs and no more."""

    def _trail(self, broker):
        from broker.store.auditlog import AuditQuery, entries

        broker.write_store()
        return entries(broker.store, AuditQuery(limit=None))

    def test_a_search_is_recorded_with_its_filters_and_the_identifier_as_a_reference(self, api):
        """``message.searched``: the filter names, the CIN as its keyed reference, never the CIN."""
        from broker.audit import load_key, patient_ref

        client, broker, patient = api
        client.get(
            "/api/messages", params={"patient": patient.cin, "event": "ADT^A01"}, headers=AUTH
        )
        (searched,) = [e for e in self._trail(broker) if e["action"] == "message.searched"]
        assert searched["actor"] == "api"
        assert searched["details"]["filters"] == ["event"]
        assert searched["targets"]["identifier"] == patient_ref(
            load_key(broker.settings), patient.cin
        )
        assert patient.cin not in str(searched)

    def test_a_content_view_is_recorded_with_its_reason_and_a_metadata_view_without(self, api):
        """Trace without reason: ``message.viewed``; with one: ``content.viewed`` and the reason."""
        client, broker, _ = api
        (item,) = client.get("/api/messages", params={"control_id": "CL-1"}, headers=AUTH).json()[
            "items"
        ]
        client.get(f"/api/messages/{item['id']}/trace", headers=AUTH)
        why = "INC-4523 the lab asks what we sent"
        client.get(f"/api/messages/{item['id']}/trace", params={"reason": why}, headers=AUTH)
        views = [e for e in self._trail(broker) if e["action"].endswith(".viewed")]
        assert [(v["action"], v["reason"], v["targets"]["envelope"]) for v in views] == [
            ("message.viewed", "", item["id"]),
            ("content.viewed", why, item["id"]),
        ]

    @pytest.mark.parametrize("reason", ["", "   ", ".", "x", "because"])
    def test_a_reason_that_says_nothing_is_refused(self, api, reason):
        """Blank, punctuation or one word under 8 letters: 422 saying why, and nothing shown."""
        client, broker, _ = api
        (item,) = client.get("/api/messages", params={"control_id": "CL-1"}, headers=AUTH).json()[
            "items"
        ]
        reply = client.get(
            f"/api/messages/{item['id']}/trace", params={"reason": reason}, headers=AUTH
        )
        assert reply.status_code == 422
        assert "reason" in reply.json()["detail"]
        assert not [e for e in self._trail(broker) if e["action"] == "content.viewed"]


class TestAuditRoutes:
    """``/api/audit``: list and filter, verify, export as JSON and as FHIR AuditEvents."""

    def test_list_filters_by_patient_identifier_and_action(self, api):
        """The CIN finds the patient's two disclosures (one per subscriber)."""
        client, broker, patient = api
        broker.write_store()
        params = {"patient": patient.cin, "action": "message.delivered"}
        reply = client.get("/api/audit", params=params, headers=AUTH)
        assert reply.status_code == 200
        items = reply.json()["items"]
        assert sorted(i["targets"]["subscriber"] for i in items) == ["dmp-national", "lab-legacy"]
        other = client.get("/api/audit", params={"patient": "ZZ999999"}, headers=AUTH).json()
        assert other["items"] == []

    def test_verify_answers_intact_then_names_an_altered_entry(self, api):
        """``/api/audit/verify``: ok; after an UPDATE of entry 1, not ok at 1 (altered)."""
        import sqlalchemy as sa

        client, broker, _ = api
        broker.write_store()
        verdict = client.get("/api/audit/verify", headers=AUTH).json()
        assert verdict["ok"] is True
        assert verdict["head_seq"] >= 2
        with broker.store.begin() as connection:
            connection.execute(sa.text("UPDATE audit SET reason = 'nothing' WHERE seq = 1"))
        verdict = client.get("/api/audit/verify", headers=AUTH).json()
        assert (verdict["ok"], verdict["first_bad"], verdict["problem"]) == (False, 1, "altered")

    def test_export_as_fhir_is_a_valid_bundle_of_audit_events(self, api):
        """Each entry an AuditEvent (validated independently here with fhir.resources R4B)."""
        from fhir.resources.R4B.bundle import Bundle

        client, broker, _ = api
        broker.write_store()
        reply = client.get("/api/audit/export", params={"format": "fhir"}, headers=AUTH)
        assert reply.status_code == 200
        body = reply.json()
        parsed = Bundle.model_validate(body)
        events = [e.resource for e in parsed.entry]
        assert {e.__resource_type__ for e in events} == {"AuditEvent"}
        delivered = [e for e in events if e.subtype[0].code == "message.delivered"]
        assert len(delivered) == 2
        assert {e.type.code for e in delivered} == {"110106"}
        recipients = {
            a.who.identifier.value for e in delivered for a in e.agent if a.who.identifier
        }
        assert recipients == {"dmp-national", "lab-legacy"}

    def test_audit_routes_need_the_token_and_declare_audit_read(self, api):
        """401 without the token; the OpenAPI schema names the permission."""
        client, _, _ = api
        for path in ("/api/audit", "/api/audit/verify", "/api/audit/export"):
            assert client.get(path).status_code == 401
        schema = client.get("/openapi.json", headers=AUTH).json()
        for path in ("/api/audit", "/api/audit/verify", "/api/audit/export"):
            assert schema["paths"][path]["get"]["x-permission"] == "audit.read"
