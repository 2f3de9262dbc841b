"""Tests of the FHIR capture endpoint (the demo's national DMP subscriber)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from broker.delivery.render import ENVELOPE_SYSTEM
from broker.testing import wait_until
from passerelle_demo.peers.fhir_capture import FhirCapture


def _bundle(envelope_id: str, ipp: str = "IPP0000001", n_obs: int = 2) -> dict[str, Any]:
    patient_url = f"Patient?identifier=urn:oid:2.25.1|{ipp}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:0b7c1a8e-0000-4000-8000-000000000001",
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:oid:2.25.1", "value": ipp}],
                "name": [{"family": "TEST", "given": ["Synthetic"]}],
            },
            "request": {"method": "PUT", "url": patient_url},
        }
    ]
    for i in range(n_obs):
        entries.append(
            {
                "fullUrl": f"urn:uuid:0b7c1a8e-0000-4000-8000-00000000010{i}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                    "identifier": [{"system": "urn:lab", "value": f"{envelope_id}-{i}"}],
                },
                "request": {
                    "method": "PUT",
                    "url": f"Observation?identifier=urn:lab|{envelope_id}-{i}",
                },
            }
        )
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": ENVELOPE_SYSTEM, "value": envelope_id},
        "entry": entries,
    }


@pytest.fixture(name="capture")
def fixture_capture() -> Iterator[FhirCapture]:
    with FhirCapture() as capture:
        yield capture


@pytest.fixture(name="client")
def fixture_client(capture: FhirCapture) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=capture.url, timeout=5) as client:
        yield client


class TestTransactions:
    def test_transaction_answers_one_response_per_entry(
        self, capture: FhirCapture, client: httpx.Client
    ) -> None:
        """A transaction Bundle gets a transaction-response with one 201 per new entry."""
        reply = client.post("", json=_bundle("env-1"))
        assert reply.status_code == 200
        body = reply.json()
        assert body["type"] == "transaction-response"
        assert [e["response"]["status"] for e in body["entry"]] == ["201 Created"] * 3
        assert body["entry"][0]["response"]["location"].startswith("Patient/")
        assert capture.received_count == 1
        assert capture.received[0]["identifier"]["value"] == "env-1"

    def test_redelivery_updates_instead_of_creating(
        self, capture: FhirCapture, client: httpx.Client
    ) -> None:
        """The same conditional URLs sent again are updated (200 OK), never duplicated."""
        client.post("", json=_bundle("env-1"))
        reply = client.post("", json=_bundle("env-1"))
        assert [e["response"]["status"] for e in reply.json()["entry"]] == ["200 OK"] * 3
        assert capture.unique_resources() == {"Patient": 1, "Observation": 2}
        assert capture.received_control_ids == ["env-1", "env-1"]
        assert capture.duplicate_control_ids() == {"env-1": 2}
        stored = capture.stored("Patient?identifier=urn:oid:2.25.1|IPP0000001")
        assert stored is not None
        assert stored.version == 2

    def test_same_patient_in_two_messages_is_one_patient(
        self, capture: FhirCapture, client: httpx.Client
    ) -> None:
        """Two envelopes about one patient make one Patient and distinct envelope ids."""
        client.post("", json=_bundle("env-1"))
        client.post("", json=_bundle("env-2"))
        assert capture.unique_resources() == {"Patient": 1, "Observation": 4}
        assert capture.duplicate_control_ids() == {}
        assert capture.envelope_ids == {"env-1", "env-2"}

    def test_plain_post_always_creates(self, capture: FhirCapture, client: httpx.Client) -> None:
        """An entry POSTed without ifNoneExist is a new resource each time."""
        bundle = _bundle("env-1", n_obs=0)
        bundle["entry"][0]["request"] = {"method": "POST", "url": "Patient"}
        client.post("", json=bundle)
        client.post("", json=bundle)
        assert capture.unique_resources() == {"Patient": 2}

    def test_conditional_create_does_not_duplicate(
        self, capture: FhirCapture, client: httpx.Client
    ) -> None:
        """A POST with ifNoneExist matching a stored resource answers 200 and creates nothing."""
        bundle = _bundle("env-1", n_obs=0)
        bundle["entry"][0]["request"] = {
            "method": "POST",
            "url": "Patient",
            "ifNoneExist": "identifier=urn:oid:2.25.1|IPP0000001",
        }
        client.post("", json=bundle)
        second = client.post("", json=bundle)
        assert second.json()["entry"][0]["response"]["status"] == "200 OK"
        assert capture.unique_resources() == {"Patient": 1}

    def test_malformed_bundle_is_400_and_stores_nothing(
        self, capture: FhirCapture, client: httpx.Client
    ) -> None:
        """A transaction with a bad entry is refused whole with an OperationOutcome."""
        bundle = _bundle("env-1")
        bundle["entry"][1]["request"] = {"method": "PATCH", "url": "Observation/1"}
        reply = client.post("", json=bundle)
        assert reply.status_code == 400
        assert reply.json()["resourceType"] == "OperationOutcome"
        assert capture.unique_resources() == {}
        assert capture.received_count == 0

    def test_not_json_is_400(self, client: httpx.Client) -> None:
        """A body that is not JSON is answered 400."""
        assert client.post("", content=b"MSH|^~\\&|").status_code == 400

    def test_single_resource_conditional_put(
        self, capture: FhirCapture, client: httpx.Client
    ) -> None:
        """PUT {base}/Patient?identifier=… creates (201) then updates (200) one resource."""
        patient = _bundle("x")["entry"][0]["resource"]
        url = "/Patient?identifier=urn:oid:2.25.1|IPP0000001"
        assert client.put(url, json=patient).status_code == 201
        second = client.put(url, json=patient)
        assert second.status_code == 200
        assert second.headers["ETag"] == 'W/"2"'
        assert capture.unique_resources() == {"Patient": 1}


class TestMetadata:
    def test_metadata_is_a_capability_statement(self, client: httpx.Client) -> None:
        """GET {base}/metadata answers a CapabilityStatement for FHIR 4.0.1."""
        reply = client.get("/metadata")
        assert reply.status_code == 200
        assert reply.json()["resourceType"] == "CapabilityStatement"
        assert reply.json()["fhirVersion"] == "4.0.1"

    def test_other_paths_are_404(self, capture: FhirCapture) -> None:
        """Paths outside the base are not found."""
        reply = httpx.get(f"http://127.0.0.1:{capture.port}/other", timeout=5)
        assert reply.status_code == 404


class TestModes:
    def test_error_mode_answers_503(self, capture: FhirCapture, client: httpx.Client) -> None:
        """In error mode every POST is a 503 with an OperationOutcome and nothing is recorded."""
        capture.mode = "error"
        reply = client.post("", json=_bundle("env-1"))
        assert reply.status_code == 503
        assert reply.json()["issue"][0]["code"] == "transient"
        assert capture.received_count == 0

    def test_reject_mode_answers_422(self, capture: FhirCapture, client: httpx.Client) -> None:
        """In reject mode every POST is a 422 with an OperationOutcome."""
        capture.mode = "reject"
        reply = client.post("", json=_bundle("env-1"))
        assert reply.status_code == 422
        assert reply.json()["resourceType"] == "OperationOutcome"

    def test_down_refuses_connections_then_ok_listens_again(self, capture: FhirCapture) -> None:
        """Down stops listening on the port; ok listens again on the same port."""
        port = capture.port
        capture.mode = "down"
        with pytest.raises(httpx.ConnectError):
            httpx.post(capture.url, json=_bundle("env-1"), timeout=2)
        capture.mode = "ok"
        assert capture.port == port
        assert httpx.post(capture.url, json=_bundle("env-1"), timeout=5).status_code == 200

    def test_down_drops_keep_alive_connections(
        self, capture: FhirCapture, client: httpx.Client
    ) -> None:
        """Going down closes open keep-alive connections too, so a client cannot deliver."""
        assert client.post("", json=_bundle("env-1")).status_code == 200
        capture.mode = "down"
        with pytest.raises(httpx.TransportError):
            client.post("", json=_bundle("env-2"))
        assert capture.received_control_ids == ["env-1"]

    def test_fail_next_fails_then_recovers(
        self, capture: FhirCapture, client: httpx.Client
    ) -> None:
        """fail_next(n) answers n errors, then accepts again."""
        capture.fail_next(2)
        codes = [client.post("", json=_bundle(f"env-{i}")).status_code for i in range(3)]
        assert codes == [503, 503, 200]
        assert capture.received_control_ids == ["env-2"]

    def test_unknown_mode_is_refused(self, capture: FhirCapture) -> None:
        """Setting a mode that does not exist is a ValueError."""
        with pytest.raises(ValueError, match="unknown mode"):
            capture.mode = "slow"  # type: ignore[assignment]

    def test_reset_forgets_everything(self, capture: FhirCapture, client: httpx.Client) -> None:
        """reset() empties the records and the store."""
        client.post("", json=_bundle("env-1"))
        capture.reset()
        assert capture.received_count == 0
        assert capture.unique_resources() == {}


class TestLatency:
    def test_latency_delays_but_keeps_order(self, capture: FhirCapture) -> None:
        """With latency_s set, answers still come in request order on one connection."""
        capture.latency_s = 0.01
        with httpx.Client(base_url=capture.url, timeout=5) as client:
            for i in range(3):
                assert client.post("", json=_bundle(f"env-{i}")).status_code == 200
        assert capture.received_control_ids == ["env-0", "env-1", "env-2"]

    def test_a_held_request_is_in_flight_until_answered(self, capture: FhirCapture) -> None:
        """While latency_s holds a request it is listed in flight with its sender's port."""
        capture.latency_s = 1.0
        with httpx.Client(base_url=capture.url, timeout=5) as client, ThreadPoolExecutor(1) as pool:
            reply = pool.submit(client.post, "", json=_bundle("env-held"))
            assert wait_until(capture.in_flight, 5, 0.01)
            (held,) = capture.in_flight()
            assert held.identifier == "env-held"
            assert held.peer[0] == "127.0.0.1"
            assert held.peer[1] > 0
            assert reply.result().status_code == 200
        assert capture.in_flight() == []
        assert capture.abandoned() == []

    def test_a_held_request_whose_sender_disconnects_is_abandoned(
        self, capture: FhirCapture
    ) -> None:
        """A connection closed while its request is held: never answered, listed as abandoned."""
        capture.latency_s = 0.5
        body = json.dumps(_bundle("env-gone")).encode()
        head = (f"POST /fhir HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection((capture.host, capture.port), timeout=5) as raw:
            raw.sendall(head + body)
            assert wait_until(capture.in_flight, 5, 0.01)
        assert wait_until(capture.abandoned, 5, 0.01)
        assert [r.identifier for r in capture.abandoned()] == ["env-gone"]
        assert capture.in_flight() == []
        time.sleep(1.0)  # past the latency: the answer was never sent nor counted
        assert capture.received_control_ids == []


class TestChunked:
    def test_chunked_body_is_read(self, capture: FhirCapture, client: httpx.Client) -> None:
        """A body sent with Transfer-Encoding: chunked is reassembled."""
        data = json.dumps(_bundle("env-c")).encode()
        reply = client.post("", content=iter([data[:100], data[100:]]))
        assert reply.status_code == 200
        assert capture.received_control_ids == ["env-c"]


class TestValidation:
    def test_invalid_bundle_is_422_when_validating(self) -> None:
        """With validate=True a Bundle that is not FHIR R4B is answered 422 and not recorded."""
        with FhirCapture(validate=True) as capture:
            bad = _bundle("env-1")
            bad["entry"][0]["resource"]["name"] = "not-a-list-of-HumanName"
            reply = httpx.post(capture.url, json=bad, timeout=10)
            assert reply.status_code == 422
            assert "entry" in reply.json()["issue"][0]["diagnostics"]
            assert capture.received_count == 0
            assert capture.invalid == 1
            assert httpx.post(capture.url, json=_bundle("env-2"), timeout=10).status_code == 200
            assert capture.count == 1
