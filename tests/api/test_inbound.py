"""Tests of POST /inbound/{adapter_id}/hl7v2 and /fhir on a real Redis."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker import keys
from broker.ack import read_ack
from broker.adapters.spec import AdapterSpec
from broker.api import create_app
from broker.intake.fhir import MAX_JSON_DEPTH
from broker.settings import Settings
from broker.testing import StubCelery, raw_of, wait_until
from passerelle_demo.synthetic import adt, patients

TOKEN = "synthetic-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADAPTERS = {
    "hosp-http.yaml": "id: hosp-http\nname: H\ndirection: inbound\ntransport: http\n",
    "hosp-fhir.yaml": (
        "id: hosp-fhir\nname: F\ndirection: inbound\ntransport: http\nformat: fhir\n"
    ),
    "hosp-http-rabat.yaml": (
        "id: hosp-http-rabat\nname: R\ndirection: inbound\ntransport: http\n"
        "senders:\n  - {application: HIS, facility: CHU-RABAT}\n"
    ),
    "hosp-fhir-2.yaml": (
        "id: hosp-fhir-2\nname: F2\ndirection: inbound\ntransport: http\nformat: fhir\n"
    ),
    "hosp-mllp.yaml": (
        "id: hosp-mllp\nname: M\ndirection: inbound\ntransport: mllp\nlisten: 127.0.0.1:2575\n"
    ),
}
LIMIT = 4096
HEAD = 1024
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "syn-1",
    "identifier": [{"system": "urn:oid:1.2.3", "value": "SYN0001"}],
    "birthDate": "1980-02-03",
}


@pytest.fixture(scope="module", name="celery")
def fixture_celery() -> StubCelery:
    return StubCelery()


@pytest.fixture(scope="module", name="app_client")
def fixture_app_client(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, celery: StubCelery
) -> Iterator[TestClient]:
    adapters: Path = tmp_path_factory.mktemp("adapters")
    for name, text in ADAPTERS.items():
        (adapters / name).write_text(text)
    settings = Settings(
        redis_url=redis_url,
        api_token=SecretStr(TOKEN),
        adapters_dir=adapters,
        max_message_bytes=LIMIT,
        rejected_head_bytes=HEAD,
    )
    app = create_app(settings)
    app.state.inbound_celery = celery
    with TestClient(app) as client:
        yield client


@pytest.fixture(name="client")
def fixture_client(
    app_client: TestClient, redis_client: redis.Redis, celery: StubCelery
) -> TestClient:
    celery.clear()
    return app_client


def _journalled(redis_client: redis.Redis) -> list[dict[bytes, bytes]]:
    entries: list[Any] = []
    for p in range(8):
        entries.extend(cast(list[Any], redis_client.xrange(keys.inbound(p))))
    return [fields for _, fields in entries]


def _rejected(redis_client: redis.Redis) -> list[dict[bytes, bytes]]:
    entries = cast(list[Any], redis_client.xrange(keys.REJECTED))
    return [fields for _, fields in entries]


def _message(control_id: str = "HTTP0001") -> bytes:
    return adt(patients(1, seed=3)[0], "A01", control_id=control_id).encode()


def _assert_head_size_and_digest(fields: dict[bytes, bytes], payload: bytes) -> None:
    """Issue 8 item 6: an over-size input keeps HEAD bytes, its whole size and SHA-256."""
    digest = hashlib.sha256(payload).hexdigest()
    assert raw_of(fields) == payload[:HEAD]
    assert int(fields[b"size"]) == len(payload)
    assert fields[b"sha256"].decode() == digest
    assert f"kept: the first {HEAD} of {len(payload)} bytes, sha256 {digest}" in (
        fields[b"reason"].decode()
    )


def _post_fhir(client: TestClient, body: bytes | str) -> Any:
    headers = {**AUTH, "Content-Type": "application/fhir+json"}
    return client.post("/inbound/hosp-fhir/fhir", content=body, headers=headers)


def _nested_extension(levels: int) -> dict[str, Any]:
    """An Extension holding an extension ``levels`` deep (two JSON levels each)."""
    extension: dict[str, Any] = {"url": "x", "valueString": "x"}
    for _ in range(levels):
        extension = {"url": "x", "extension": [extension]}
    return extension


class TestHL7v2:
    def test_a_message_is_journalled_and_answered_aa(
        self, client: TestClient, redis_client: redis.Redis, celery: StubCelery
    ) -> None:
        """200 with an AA ACK echoing MSH-10; the raw bytes are in the journal, a drain queued."""
        reply = client.post("/inbound/hosp-http/hl7v2", content=_message(), headers=AUTH)
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "x-application/hl7-v2+er7"
        ack = read_ack(reply.content)
        assert (ack.code, ack.control_id) == ("AA", "HTTP0001")
        (fields,) = _journalled(redis_client)
        assert raw_of(fields) == _message()
        assert fields[b"source"] == b"hosp-http"
        # The drain task is published beside the answer (AsyncKicker.dispatch_soon).
        assert wait_until(lambda: celery.queued, 10, 0.01)
        assert [task.name for task in celery.queued] == ["passerelle.drain_inbound"]
        counts = redis_client.hgetall(keys.adapter_stats("hosp-http"))
        assert counts[b"received"] == b"1"
        # The time of the last message is its journal entry's (the stream id's milliseconds).
        entry_ids = [
            entry_id.decode()
            for p in range(8)
            for entry_id, _ in cast(list[Any], redis_client.xrange(keys.inbound(p)))
        ]
        assert [i.partition("-")[0] for i in entry_ids] == [counts[b"last_ms"].decode()]

    @pytest.mark.parametrize(
        ("payload", "code"),
        [
            pytest.param(b"GET / HTTP/1.1\r\n\r\n", "AE", id="not-hl7"),
            pytest.param(b"MSH|^~\\&|A|B|C|D|2025||ZZZ^Z01|X1|P|2.5.1", "AR", id="no-mapping"),
        ],
    )
    def test_a_refused_message_is_answered_200_and_kept(
        self, client: TestClient, redis_client: redis.Redis, payload: bytes, code: str
    ) -> None:
        """AE/AR for a reason in the message is still a 200; the message is kept in pl:rejected."""
        reply = client.post("/inbound/hosp-http/hl7v2", content=payload, headers=AUTH)
        assert reply.status_code == 200
        assert read_ack(reply.content).code == code
        (fields,) = _rejected(redis_client)
        assert raw_of(fields) == payload
        assert fields[b"code"] == code.encode()
        # Counted per adapter and ACK code for the console's overview.
        counts = redis_client.hgetall(keys.adapter_stats("hosp-http"))
        assert counts[f"refused:{code}".encode()] == b"1"
        assert b"received" not in counts

    def test_backpressure_is_503_with_retry_after_and_an_ar(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """With pl:pressure set the sender gets 503, Retry-After and an AR; nothing is kept."""
        redis_client.set(keys.PRESSURE, "memory")
        reply = client.post("/inbound/hosp-http/hl7v2", content=_message(), headers=AUTH)
        assert reply.status_code == 503
        assert reply.headers["retry-after"] == "5"
        ack = read_ack(reply.content)
        assert ack.code == "AR"
        assert "resend later" in ack.text
        assert _journalled(redis_client) == []

    def test_an_oversize_message_is_413_with_an_ar(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """A body over max_message_bytes gets 413 and an AR; its first bytes, size, digest kept."""
        payload = _message() + b"\rNTE|1||" + b"x" * (3 * LIMIT)
        reply = client.post("/inbound/hosp-http/hl7v2", content=payload, headers=AUTH)
        assert reply.status_code == 413
        ack = read_ack(reply.content)
        assert ack.code == "AR"
        assert f"{len(payload)} bytes, over the limit of {LIMIT} bytes" in ack.text
        assert _journalled(redis_client) == []
        (fields,) = _rejected(redis_client)
        _assert_head_size_and_digest(fields, payload)

    def test_a_sender_not_in_senders_is_ar_and_kept(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """Issue 8 item 1 over HTTP: MSH-4 not in the adapter's senders: 200 with AR, kept."""
        listed = client.post("/inbound/hosp-http-rabat/hl7v2", content=_message(), headers=AUTH)
        assert read_ack(listed.content).code == "AA"
        other = _message("HTTP0002").replace(b"|CHU-RABAT|", b"|CHU-CASA|", 1)
        reply = client.post("/inbound/hosp-http-rabat/hl7v2", content=other, headers=AUTH)
        assert reply.status_code == 200
        ack = read_ack(reply.content)
        assert ack.code == "AR"
        assert "'CHU-CASA'" in ack.text
        assert len(_journalled(redis_client)) == 1
        (fields,) = _rejected(redis_client)
        assert (raw_of(fields), fields[b"reason"].decode()) == (other, ack.text)

    def test_the_same_ids_on_two_http_adapters_are_two_messages(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """Issue 8 item 1 over HTTP: the adapter is part of the dedupe key; a resend is not."""
        codes = [
            read_ack(client.post(f"/inbound/{a}/hl7v2", content=_message(), headers=AUTH).content)
            for a in ("hosp-http", "hosp-http-rabat", "hosp-http")
        ]
        assert [c.code for c in codes] == ["AA", "AA", "AA"]
        assert sorted(f[b"source"] for f in _journalled(redis_client)) == [
            b"hosp-http",
            b"hosp-http-rabat",
        ]

    def test_deep_json_is_answered_ae_not_500(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """A deeply nested JSON body posted as HL7 v2 is not HL7: AE, kept, never a 500."""
        payload = ('{"resourceType": "Patient", "a": ' + "[" * 1500 + "]" * 1500 + "}").encode()
        reply = client.post("/inbound/hosp-http/hl7v2", content=payload, headers=AUTH)
        assert reply.status_code == 200
        assert read_ack(reply.content).code == "AE"
        (fields,) = _rejected(redis_client)
        assert raw_of(fields) == payload

    @pytest.mark.parametrize(
        "path",
        ["/inbound/nobody/hl7v2", "/inbound/hosp-mllp/hl7v2", "/inbound/hosp-fhir/hl7v2"],
    )
    def test_an_unknown_or_non_http_adapter_is_404(self, client: TestClient, path: str) -> None:
        """Only an inbound http adapter of format hl7v2 takes HL7 v2 over HTTP."""
        reply = client.post(path, content=_message(), headers=AUTH)
        assert reply.status_code == 404
        assert "detail" in reply.json()

    def test_the_bearer_token_is_required(self, client: TestClient) -> None:
        """Without the API token the message is refused with 401 and not journalled."""
        reply = client.post("/inbound/hosp-http/hl7v2", content=_message())
        assert reply.status_code == 401


class TestFHIR:
    def test_a_valid_resource_is_journalled_and_202(
        self, client: TestClient, redis_client: redis.Redis, celery: StubCelery
    ) -> None:
        """202 with an information OperationOutcome; the JSON is journalled as FHIR."""
        body = json.dumps(PATIENT)
        reply = _post_fhir(client, body)
        assert reply.status_code == 202
        assert reply.headers["content-type"] == "application/fhir+json"
        (issue,) = reply.json()["issue"]
        assert issue["severity"] == "information"
        assert issue["diagnostics"].startswith("accepted; the message is journalled")
        (fields,) = _journalled(redis_client)
        assert fields[b"content_type"] == b"application/fhir+json"
        assert raw_of(fields) == body.encode()
        assert wait_until(lambda: celery.queued, 10, 0.01)  # published beside the answer
        assert len(celery.queued) == 1

    def test_a_resent_resource_is_answered_once_and_journalled_once(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """The same resource id twice: the same 202 body, one journal entry."""
        first = _post_fhir(client, json.dumps(PATIENT))
        second = _post_fhir(client, json.dumps(PATIENT))
        assert (first.status_code, second.status_code) == (202, 202)
        assert first.content == second.content
        assert len(_journalled(redis_client)) == 1
        # A duplicate is not received twice.
        assert redis_client.hget(keys.adapter_stats("hosp-fhir"), "received") == b"1"

    @pytest.mark.parametrize(
        ("body", "expression"),
        [
            pytest.param('{"resourceType": "Patient",', None, id="invalid-json"),
            pytest.param(b"\xff\xfe{", None, id="not-utf8"),
            pytest.param('{"name": "SYN"}', "resourceType", id="no-resource-type"),
            pytest.param("[1, 2]", "resourceType", id="not-an-object"),
            pytest.param('{"resourceType": "Nope"}', "resourceType", id="unknown-type"),
        ],
    )
    def test_unreadable_json_is_400(
        self, client: TestClient, redis_client: redis.Redis, body: str, expression: str | None
    ) -> None:
        """JSON that cannot be read or is not a FHIR resource: 400 OperationOutcome, not kept."""
        reply = _post_fhir(client, body)
        assert reply.status_code == 400
        outcome = reply.json()
        assert outcome["resourceType"] == "OperationOutcome"
        (issue,) = outcome["issue"]
        assert (issue["severity"], issue["code"]) == ("error", "structure")
        assert issue.get("expression", [None]) == [expression]
        assert _journalled(redis_client) == []

    def test_an_invalid_resource_is_422_naming_each_element_never_its_value(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """Every validation error is an issue whose expression is the element path."""
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": {**PATIENT, "birthDate": "SYN-Fès-1980", "foo": "SYN-SECRET"}}],
        }
        reply = _post_fhir(client, json.dumps(bundle))
        assert reply.status_code == 422
        issues = reply.json()["issue"]
        assert sorted(e for i in issues for e in i["expression"]) == [
            "Bundle.entry[0].resource.birthDate",
            "Bundle.entry[0].resource.foo",
        ]
        assert all(i["severity"] == "error" for i in issues)
        assert "SYN-" not in reply.text
        assert _journalled(redis_client) == []
        assert redis_client.hget(keys.adapter_stats("hosp-fhir"), "refused:422") == b"1"

    def test_backpressure_is_503_with_retry_after(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """With pl:pressure set: 503, Retry-After and an error OperationOutcome; nothing kept."""
        redis_client.set(keys.PRESSURE, "memory")
        reply = _post_fhir(client, json.dumps(PATIENT))
        assert reply.status_code == 503
        assert reply.headers["retry-after"] == "5"
        (issue,) = reply.json()["issue"]
        assert issue["severity"] == "error"
        assert "resend later" in issue["diagnostics"]
        assert _journalled(redis_client) == []

    def test_an_oversize_body_is_413(self, client: TestClient, redis_client: redis.Redis) -> None:
        """Over max_message_bytes: 413 and an OperationOutcome; its head, size and digest kept."""
        body = json.dumps({**PATIENT, "text": "x" * (5 * LIMIT)}).encode()
        reply = _post_fhir(client, body)
        assert reply.status_code == 413
        assert reply.json()["resourceType"] == "OperationOutcome"
        (fields,) = _rejected(redis_client)
        _assert_head_size_and_digest(fields, body)
        listed = client.get("/api/rejected", headers=AUTH).json()[0]
        assert (listed["bytes"], listed["kept_bytes"]) == (len(body), HEAD)
        assert listed["sha256"] == hashlib.sha256(body).hexdigest()

    def test_a_new_version_of_a_resource_is_a_new_message(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """Issue 8 item 2: the same Patient id with another city is journalled, not a duplicate."""
        rabat = {**PATIENT, "address": [{"city": "Rabat"}]}
        fes = {**PATIENT, "address": [{"city": "Fès"}]}
        first = _post_fhir(client, json.dumps(rabat))
        second = _post_fhir(client, json.dumps(fes))
        assert (first.status_code, second.status_code) == (202, 202)
        assert first.content != second.content  # two envelope ids
        assert [json.loads(raw_of(f))["address"][0]["city"] for f in _journalled(redis_client)] == [
            "Rabat",
            "Fès",
        ]
        again = _post_fhir(client, json.dumps(fes))
        assert again.content == second.content
        assert len(_journalled(redis_client)) == 2

    def test_only_meta_version_changed_is_a_new_message(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """meta.versionId (or lastUpdated) is content: version 2 of a resource is kept."""
        v1 = {**PATIENT, "meta": {"versionId": "1", "lastUpdated": "2026-11-30T09:00:00+01:00"}}
        v2 = {**PATIENT, "meta": {"versionId": "2", "lastUpdated": "2026-11-30T09:00:00+01:00"}}
        assert _post_fhir(client, json.dumps(v1)).content != (
            _post_fhir(client, json.dumps(v2)).content
        )
        assert len(_journalled(redis_client)) == 2

    def test_a_repost_spelt_differently_is_still_a_duplicate(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """Key order and whitespace are not content: the re-post gets the first 202 body."""
        first = _post_fhir(client, json.dumps(PATIENT))
        respelt = json.dumps(dict(reversed(list(PATIENT.items()))), indent=3)
        assert respelt != json.dumps(PATIENT)
        second = _post_fhir(client, respelt)
        assert second.content == first.content
        assert len(_journalled(redis_client)) == 1

    def test_the_same_resource_on_two_adapters_is_two_messages(
        self, client: TestClient, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """The dedupe key holds the adapter: another gateway's identical post is journalled."""
        first = _post_fhir(client, json.dumps(PATIENT))
        other = client.post(
            "/inbound/hosp-fhir-2/fhir",
            content=json.dumps(PATIENT),
            headers={**AUTH, "Content-Type": "application/fhir+json"},
        )
        assert (first.status_code, other.status_code) == (202, 202)
        assert sorted(f[b"source"] for f in _journalled(redis_client)) == [
            b"hosp-fhir",
            b"hosp-fhir-2",
        ]

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(
                json.dumps(
                    {**PATIENT, "extension": [_nested_extension(150)]}, separators=(",", ":")
                ),
                id="extension-150-deep",
            ),
            pytest.param(
                '{"resourceType": "Patient", "name": ' + "[" * 400 + "]" * 400 + "}",
                id="array-400-deep",
            ),
            pytest.param(
                '{"resourceType": "Patient", "name": ' + "[" * 1500 + "]" * 1500 + "}",
                id="array-1500-deep",
            ),
        ],
    )
    def test_deep_nesting_is_400_and_kept(
        self, client: TestClient, redis_client: redis.Redis, body: str
    ) -> None:
        """Issue 8 item 6: JSON nested too deep is a one-line 400 OperationOutcome, kept."""
        reply = _post_fhir(client, body)
        assert reply.status_code == 400, reply.text
        (issue,) = reply.json()["issue"]
        assert (issue["severity"], issue["code"]) == ("error", "structure")
        assert issue["diagnostics"] == f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels"
        assert _journalled(redis_client) == []
        (fields,) = _rejected(redis_client)
        assert raw_of(fields) == body.encode()
        assert fields[b"reason"].decode() == f"HTTP 400: {issue['diagnostics']}"

    def test_nesting_within_the_limit_is_validated_as_usual(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """A resource nested near the limit (49 extensions, 101 levels less a few) is accepted."""
        body = json.dumps({**PATIENT, "extension": [_nested_extension(48)]})
        reply = _post_fhir(client, body)
        assert reply.status_code == 202, reply.text
        assert len(_journalled(redis_client)) == 1

    def test_an_hl7v2_adapter_is_404_for_fhir(self, client: TestClient) -> None:
        """The FHIR route takes only inbound http adapters of format fhir."""
        assert _post_fhir(client, json.dumps(PATIENT)).status_code == 202
        reply = client.post("/inbound/hosp-http/fhir", content=json.dumps(PATIENT), headers=AUTH)
        assert reply.status_code == 404


def test_journal_down_is_503_for_both_routes(tmp_path: Path) -> None:
    """An unreachable Redis: 503 with Retry-After, an AR naming the journal, an OperationOutcome."""
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    for name, text in ADAPTERS.items():
        (adapters / name).write_text(text)
    settings = Settings(
        redis_url=f"unix://{tmp_path / 'nothing-here.sock'}",
        api_token=SecretStr(TOKEN),
        adapters_dir=adapters,
    )
    app = create_app(settings)
    app.state.inbound_celery = StubCelery()
    with TestClient(app) as client:
        hl7 = client.post("/inbound/hosp-http/hl7v2", content=_message(), headers=AUTH)
        fhir = _post_fhir(client, json.dumps(PATIENT))
    assert (hl7.status_code, hl7.headers["retry-after"]) == (503, "5")
    ack = read_ack(hl7.content)
    assert ack.code == "AR"
    assert "journal" in ack.text
    assert (fhir.status_code, fhir.headers["retry-after"]) == (503, "5")
    assert "journal" in fhir.json()["issue"][0]["diagnostics"]


def test_an_http_adapter_is_inbound_only_and_needs_no_address() -> None:
    """transport http needs nothing more inbound; outbound it is refused with a clear reason."""
    spec = AdapterSpec(id="h", name="H", direction="inbound", transport="http")
    assert spec.listen is None
    with pytest.raises(ValueError, match="transport 'http' cannot be used outbound"):
        AdapterSpec(
            id="h",
            name="H",
            direction="outbound",
            transport="http",
            subscribe={"events": ["ADT^*"]},
        )


@pytest.mark.parametrize(
    ("peer", "status"),
    [
        pytest.param("10.20.30.40", 200, id="listed-network"),
        pytest.param("192.0.2.9", 403, id="elsewhere"),
    ],
)
def test_allow_from_refuses_a_client_from_elsewhere(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, peer: str, status: int
) -> None:
    """Issue 10: an http adapter with allow_from answers 403 to another address, journals
    nothing and counts it (connection_refused:not_allowed, for /metrics); a listed address gets
    its AA."""
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "hosp-lan.yaml").write_text(
        "id: hosp-lan\nname: L\ndirection: inbound\ntransport: http\nallow_from: [10.0.0.0/8]\n"
    )
    settings = Settings(redis_url=redis_url, api_token=SecretStr(TOKEN), adapters_dir=adapters)
    app = create_app(settings)
    app.state.inbound_celery = StubCelery()
    with TestClient(app, client=(peer, 50000)) as client:
        reply = client.post("/inbound/hosp-lan/hl7v2", content=_message("LAN0001"), headers=AUTH)
    assert reply.status_code == status
    if status == 200:
        assert read_ack(reply.content).code == "AA"
        assert len(_journalled(redis_client)) == 1
    else:
        assert "does not accept messages from this address" in reply.text
        assert _journalled(redis_client) == []
        assert _rejected(redis_client) == []
    counted = redis_client.hget(keys.adapter_stats("hosp-lan"), "connection_refused:not_allowed")
    assert counted == (None if status == 200 else b"1")
