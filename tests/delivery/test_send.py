"""Promises of the FHIR REST sender: a refused entry is a dead letter naming it, without PHI in the reason."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from broker.adapters.spec import AdapterSpec
from broker.delivery.send import FhirRestSender, refused_entry
from broker.envelope import Envelope
from broker.errors import PermanentDeliveryError, RetryableDeliveryError
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse
from tests.scripted_http import CLOSE, ScriptedPeer, reply

ROOT = Path(__file__).resolve().parents[2]
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "error",
            "code": "invalid",
            "details": {"text": "Conditional PUT matched multiple resources"},
            "expression": ["Bundle.entry[0].request.url"],
        }
    ],
}


class _Peer(BaseHTTPRequestHandler):
    answer: tuple[int, dict] = (200, {})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = type(self).answer
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(name="peer")
def fixture_peer() -> Iterator[tuple[str, type[_Peer]]]:
    handler = type("Peer", (_Peer,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir", handler
    server.shutdown()
    server.server_close()


def _envelope() -> Envelope:
    mappings = MappingSet.load(ROOT / "mappings")
    raw = (ROOT / "tests/samples/hl7v2/adt_a01_v251.hl7").read_bytes()
    now = datetime(2024, 1, 1, tzinfo=UTC)
    result = mappings.map_hl7v2(
        parse(decode(raw)), MapContext("env-1", "chu-rabat-adt", received_at=now)
    )
    return Envelope(
        id="env-1",
        source="chu-rabat-adt",
        content_type="application/hl7-v2",
        received_at=now,
        bundle=result.bundle,
    )


def _sender(url: str, timeout: float = 10) -> FhirRestSender:
    adapter = AdapterSpec(
        id="dmp",
        name="DMP",
        direction="outbound",
        transport="fhir-rest",
        insecure_http=True,
        url=url,
        subscribe={"events": ["ADT^*"]},
    )
    return FhirRestSender(adapter, timeout=timeout)


def test_a_failed_entry_in_a_transaction_response_is_permanent(peer) -> None:
    """200 with entry[1].response.status 400: PermanentDeliveryError naming entry 1, reply has the outcome."""
    url, handler = peer
    handler.answer = (
        200,
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {"response": {"status": "201 Created"}},
                {"response": {"status": "400", "outcome": OUTCOME}},
            ],
        },
    )
    sender = _sender(url)
    with pytest.raises(PermanentDeliveryError) as caught:
        sender.send(_envelope())
    sender.close()
    reason = str(caught.value)
    assert (
        "entry 1 (PUT Encounter?identifier=https://passerelle.ma/fhir/sid/visit/chuis|…)" in reason
    )
    assert "V2024-000781" not in reason  # the identifier value stays out of the logged reason
    assert "Conditional PUT matched multiple resources" in (caught.value.reply or "")
    assert "V2024-000781" in (caught.value.reply or "")  # the dead letter keeps the full URL


def test_a_4xx_names_the_entry_its_operation_outcome_points_at(peer) -> None:
    """400 with an OperationOutcome on Bundle.entry[0]: the reason names entry 0 without its value."""
    url, handler = peer
    handler.answer = (400, OUTCOME)
    sender = _sender(url)
    with pytest.raises(PermanentDeliveryError) as caught:
        sender.send(_envelope())
    sender.close()
    reason = str(caught.value)
    assert "entry 0 (PUT Patient?identifier=https://passerelle.ma/fhir/sid/cin|…)" in reason
    assert "BE123456" not in reason
    assert (caught.value.reply or "").startswith(
        "HTTP 400: error: Conditional PUT matched multiple resources"
    )


def test_all_entries_2xx_is_delivered() -> None:
    """A transaction-response whose entries are all 2xx is no refusal."""
    body = json.dumps({"resourceType": "Bundle", "entry": [{"response": {"status": "200 OK"}}]})
    assert refused_entry({"entry": [{}]}, body.encode()) is None


def test_a_subscriber_asking_for_conditional_references_receives_them(peer) -> None:
    """``conditional_references: true``: the Appointment's ``Practitioner/pr-77`` of the sender
    reaches the server as ``Practitioner?identifier=<its sender id>``; a server without the
    setting receives the logical reference."""
    url, handler = peer
    bodies: list[dict] = []

    def do_post(self: _Peer) -> None:
        bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        data = json.dumps({"resourceType": "Bundle", "type": "transaction-response"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    handler.do_POST = do_post  # type: ignore[method-assign]
    data = json.loads((ROOT / "mappings/tests/fhir_appointment.json").read_text(encoding="utf-8"))
    now = datetime(2024, 1, 1, tzinfo=UTC)
    mapped = MappingSet.load(ROOT / "mappings").map_fhir(
        data, MapContext("env-2", "chu-rabat-fhir", received_at=now)
    )
    envelope = Envelope(
        id="env-2",
        source="chu-rabat-fhir",
        content_type="application/fhir+json",
        received_at=now,
        bundle=mapped.bundle,
    )
    for asked in (True, False):
        sender = _sender(url)
        sender.adapter = sender.adapter.model_copy(update={"conditional_references": asked})
        sender.send(envelope)
        sender.close()
    (appointment,) = (
        e["resource"] for e in bodies[0]["entry"] if e["resource"]["resourceType"] == "Appointment"
    )
    assert appointment["participant"][1]["actor"]["reference"] == (
        "Practitioner?identifier=urn:passerelle:adapter:chu-rabat-fhir:resource:Practitioner|pr-77"
    )
    assert "Practitioner?" not in json.dumps(bodies[1])


TRANSACTION_RESPONSE = json.dumps({"resourceType": "Bundle", "type": "transaction-response"})


class TestConnection:
    """What the sender's keep-alive connection goes through (a scripted peer, byte for byte)."""

    def test_a_malformed_reply_is_retryable_and_the_next_send_reconnects(self) -> None:
        """A header line without a colon: RetryableDeliveryError saying so; then a fresh connection."""
        bad = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nnot a field\r\n\r\n{}"
        ok = reply(200, TRANSACTION_RESPONSE.encode())
        with ScriptedPeer([bad, ok]) as peer:
            sender = _sender(peer.url)
            with pytest.raises(RetryableDeliveryError) as caught:
                sender.send(_envelope())
            assert sender.send(_envelope()) == "HTTP 200"
            sender.close()
        assert str(caught.value) == (
            f"{peer.url} sent a malformed HTTP reply (header line 2 is not a field (no name and colon))"
        )
        assert peer.connections == 2

    def test_a_connection_the_server_dropped_while_idle_is_opened_again(self) -> None:
        """The server closes a kept-alive connection silently: the next POST goes on a new one."""
        ok = reply(200, TRANSACTION_RESPONSE.encode())
        with ScriptedPeer([(ok, CLOSE), ok]) as peer:
            sender = _sender(peer.url)
            assert sender.send(_envelope()) == "HTTP 200"
            time.sleep(0.05)  # the close reaches the sender's socket
            assert sender.send(_envelope()) == "HTTP 200"
            sender.close()
        assert peer.connections == 2
        assert len(peer.requests) == 2

    def test_a_chunked_transaction_response_is_read(self) -> None:
        """A chunked 200 whose entries are all 2xx is a delivery; the connection is kept."""
        body = json.dumps(
            {"resourceType": "Bundle", "entry": [{"response": {"status": "201 Created"}}]}
        ).encode()
        chunked = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        with ScriptedPeer([chunked, chunked]) as peer:
            sender = _sender(peer.url)
            assert sender.send(_envelope()) == "HTTP 200"
            assert sender.send(_envelope()) == "HTTP 200"
            sender.close()
        assert peer.connections == 1

    def test_a_server_that_does_not_answer_in_time_is_retryable(self) -> None:
        """The request arrives, no reply within the timeout: 'no answer from <url> within 0.3 s'."""
        with ScriptedPeer([b"", reply(200, TRANSACTION_RESPONSE.encode())]) as peer:
            sender = _sender(peer.url, timeout=0.3)
            with pytest.raises(RetryableDeliveryError) as caught:
                sender.send(_envelope())
            sender.close()
        assert str(caught.value) == f"no answer from {peer.url} within 0.3 s"
        assert len(peer.requests) == 1

    def test_a_refused_connection_is_retryable(self) -> None:
        """Nothing listens: 'cannot reach <url> (ConnectionRefusedError)', sent once."""
        with ScriptedPeer([]) as peer:
            url = peer.url
        sender = _sender(url)
        with pytest.raises(RetryableDeliveryError) as caught:
            sender.send(_envelope())
        sender.close()
        assert str(caught.value) == f"cannot reach {url} (ConnectionRefusedError)"
