"""``passerelle messages search|show|trace`` and ``/api/messages``, on a store the writer wrote."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker import keys
from broker.ack import read_ack
from broker.api import create_app
from broker.testing import run_cli
from passerelle_demo.synthetic import adt, patients

TOKEN = "synthetic-store-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def written(make_broker):
    """A broker whose one ADT (CL-1) was delivered to both subscribers and stored (SQLite)."""
    broker = make_broker()
    patient = next(p for p in patients(5, seed=88) if p.cin)
    assert read_ack(broker.receive(adt(patient, "A01", control_id="CL-1"))).code == "AA"
    broker.run()
    broker.write_store()
    return broker, patient


def _env(broker):
    return {"PASSERELLE_DATA_DIR": str(broker.data_dir), "PASSERELLE_STORE_URL": None}


class TestCli:
    def test_search_by_control_id_prints_the_messages_as_json(self, written):
        """The JSON list: id, control_id, adapter, event and one delivery per subscriber."""
        broker, _ = written
        run = run_cli("messages", "search", "--control-id", "CL-1", "--json", env=_env(broker))
        assert run.code == 0, run.stderr
        (item,) = json.loads(run.stdout)
        assert (item["control_id"], item["adapter"], item["event"]) == (
            "CL-1",
            "chu-rabat-adt",
            "ADT^A01",
        )
        assert len(item["id"]) == 28
        assert sorted((d["subscriber"], d["state"]) for d in item["deliveries"]) == [
            ("dmp-national", "delivered"),
            ("lab-legacy", "delivered"),
        ]

    def test_search_by_patient_and_today_in_text(self, written):
        """``--patient CIN --since today`` finds it; the text line names both subscribers."""
        broker, patient = written
        run = run_cli(
            "messages", "search", "--patient", patient.cin, "--since", "today", env=_env(broker)
        )
        assert run.code == 0, run.stderr
        assert "CL-1" in run.stdout
        assert "dmp-national=delivered" in run.stdout

    def test_show_and_trace_name_the_attempts(self, written):
        """``show --json`` has the identifiers; ``trace --json`` each subscriber's attempt."""
        broker, patient = written
        (item,) = json.loads(
            run_cli("messages", "search", "--control-id", "CL-1", "--json", env=_env(broker)).stdout
        )
        shown = json.loads(
            run_cli("messages", "show", item["id"], "--json", env=_env(broker)).stdout
        )
        assert {"kind": "CIN", "value": patient.cin} in [
            {"kind": i["kind"], "value": i["value"]} for i in shown["identifiers"]
        ]
        traced = run_cli("messages", "trace", item["id"], env=_env(broker))
        assert traced.code == 0, traced.stderr
        assert "→ lab-legacy: delivered" in traced.stdout
        assert '"AA"' in traced.stdout

    def test_an_unknown_message_is_exit_1_with_one_line(self, written):
        """No traceback: one line naming the id."""
        broker, _ = written
        run = run_cli("messages", "trace", "0" * 28, env=_env(broker))
        assert run.code == 1
        assert not run.crashed
        assert run.stderr.strip().count("\n") == 0
        assert f"no message {'0' * 28}" in run.stderr

    def test_no_store_yet_is_one_line_not_a_new_file(self, tmp_path):
        """A data directory without a store: exit 1 saying the writer creates it; nothing created."""
        run = run_cli("messages", "search", "--json", env={"PASSERELLE_DATA_DIR": str(tmp_path)})
        assert run.code == 1
        assert "passerelle store" in run.stderr
        assert not (tmp_path / "store.sqlite3").exists()

    def test_a_bad_time_is_a_usage_error(self, written):
        """``--since`` must be a time: exit 2."""
        broker, _ = written
        run = run_cli("messages", "search", "--since", "soon", env=_env(broker))
        assert run.code == 2
        assert "--since" in run.stderr


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
        """``GET /api/messages/{id}``: Redis while it has it, then the store (with a header)."""
        client, broker, _ = api
        (item,) = client.get("/api/messages", params={"control_id": "CL-1"}, headers=AUTH).json()[
            "items"
        ]
        first = client.get(f"/api/messages/{item['id']}", headers=AUTH)
        assert "x-passerelle-source" not in first.headers
        broker.client.delete(keys.envelope(item["id"]))
        second = client.get(f"/api/messages/{item['id']}", headers=AUTH)
        assert second.status_code == 200
        assert second.headers["x-passerelle-source"] == "store"
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
