"""FHIR R4 inbound end to end on the real stack: HTTP in, FHIR REST and MLLP out, refusals kept.

CHU Rabat's FHIR gateway (``chu-rabat-fhir``, an inbound ``transport: http`` adapter served by
the API) posts over real HTTP; the site file ``mappings/fhir/sites/chu-rabat-fhir.yaml``
normalises its local systems. ``dmp-national`` also subscribes to ``Bundle`` (transaction input);
``lab-legacy`` keeps ``ADT^*``, which a message Bundle whose event is table 0003 ``A01`` matches.
All patients are synthetic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from broker import keys
from broker.parsing.hl7v2 import parse
from broker.settings import REPO_ROOT
from broker.testing import wait_for_port, wait_until
from passerelle_demo.loopback import LoopbackStack

REASON = {"reason": "INC-2002 checking the FHIR intake"}
"""The envelope route returns content: it needs a reason (docs/security.md, "Audit trail")."""

pytestmark = pytest.mark.integration

ADAPTER = "chu-rabat-fhir"
IPP = "https://passerelle.ma/fhir/sid/ipp/chu-rabat"
CIN = "https://passerelle.ma/fhir/sid/cin"
LAB_LOCAL = "https://passerelle.ma/fhir/CodeSystem/lab-local"
PATIENT_URN = "urn:uuid:7f0c2a51-3d84-4b6e-9a1f-2c5d8e4b7a90"
ENCOUNTER_URN = "urn:uuid:2b9e6d14-8c3a-4f57-b0e2-5a1d7c9f3e68"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackStack]:
    """The broker with CHU Rabat's FHIR gateway registered beside the loopback adapters."""
    data_dir = tmp_path_factory.mktemp("fhir-stack")
    registration = (REPO_ROOT / "adapters" / f"{ADAPTER}.yaml").read_text(encoding="utf-8")
    (data_dir / "adapters").mkdir()
    (data_dir / "adapters" / f"{ADAPTER}.yaml").write_text(registration, encoding="utf-8")
    events = {"dmp-national": ["ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01", "Bundle"]}
    with LoopbackStack(
        data_dir,
        workers=2,
        events=events,
        rekick_interval_s=1.0,
        claim_idle_s=10.0,
        delivery_timeout_s=2.0,
    ) as running:
        assert running.settings is not None
        assert wait_for_port("127.0.0.1", running.settings.http_port, 30), running.logs()
        yield running


@pytest.fixture(scope="module")
def api(stack: LoopbackStack) -> Iterator[httpx.Client]:
    assert stack.settings is not None
    with stack.api_client() as client:
        yield client


def post(api: httpx.Client, resource: dict[str, Any] | bytes) -> httpx.Response:
    body = resource if isinstance(resource, bytes) else json.dumps(resource).encode()
    headers = {"Content-Type": "application/fhir+json"}
    return api.post(f"/inbound/{ADAPTER}/fhir", content=body, headers=headers)


def envelope_id(reply: httpx.Response) -> str:
    found = re.search(r"\(envelope ([A-Za-z0-9_-]+)\)", reply.json()["issue"][0]["diagnostics"])
    assert found, reply.text
    return found.group(1)


def transaction() -> dict[str, Any]:
    """Patient, Encounter and Observation with urn:uuid references and CHU Rabat's own systems."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "https://his.chu-rabat.ma/fhir/bundle", "value": "TX-IT-0001"},
        "entry": [
            {
                "fullUrl": PATIENT_URN,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [
                        {"system": "http://chu-rabat.ma/ipp", "value": "IPP0077120"},
                        {"system": "http://chu-rabat.ma/cin", "value": "BK482913"},
                    ],
                    "name": [
                        {"family": "EL ALAMI", "given": ["Fatima Zahra"]},
                        {"family": "العلمي", "given": ["فاطمة الزهراء"]},
                    ],
                    "gender": "female",
                    "birthDate": "1986-02-19",
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": ENCOUNTER_URN,
                "resource": {
                    "resourceType": "Encounter",
                    "identifier": [{"system": "http://chu-rabat.ma/sejour", "value": "SEJ-31877"}],
                    "status": "in-progress",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "IMP",
                    },
                    "subject": {"reference": PATIENT_URN},
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
            {
                "fullUrl": "urn:uuid:c4e81f3b-6a29-4d05-8b7e-1f6a2d9c5b34",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {
                        "coding": [{"system": "http://chu-rabat.ma/labo/codes", "code": "GLY"}]
                    },
                    "subject": {"reference": PATIENT_URN},
                    "encounter": {"reference": ENCOUNTER_URN},
                    "effectiveDateTime": "2026-11-28T08:40:00+01:00",
                    "valueQuantity": {
                        "value": 1.08,
                        "unit": "g/L",
                        "system": "http://unitsofmeasure.org",
                        "code": "g/L",
                    },
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def delivered_transaction(stack: LoopbackStack, ipp: str) -> dict[str, Any] | None:
    for bundle in stack.fhir.received:
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "Patient" and any(
                i.get("value") == ipp for i in resource.get("identifier", [])
            ):
                found: dict[str, Any] = bundle
                return found
    return None


def by_type(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind)


class TestTransactionBundle:
    def test_it_reaches_the_fhir_subscriber_normalised(
        self, stack: LoopbackStack, api: httpx.Client
    ) -> None:
        """National identifier systems, a LOINC coding before the local one, references kept."""
        reply = post(api, transaction())
        assert reply.status_code == 202, reply.text
        assert wait_until(lambda: delivered_transaction(stack, "IPP0077120"), 60), stack.logs()
        bundle = delivered_transaction(stack, "IPP0077120")
        assert bundle is not None
        assert bundle["type"] == "transaction"
        patient = by_type(bundle, "Patient")
        assert {(i["system"], i["value"]) for i in patient["identifier"]} == {
            (IPP, "IPP0077120"),
            (CIN, "BK482913"),
        }
        encounter = by_type(bundle, "Encounter")
        assert encounter["identifier"][0]["system"] == (
            "https://passerelle.ma/fhir/sid/visit/chu-rabat"
        )
        observation = by_type(bundle, "Observation")
        codings = observation["code"]["coding"]
        assert (codings[0]["system"], codings[0]["code"]) == ("http://loinc.org", "2345-7")
        assert (codings[1]["system"], codings[1]["code"]) == (LAB_LOCAL, "GLY")
        urls = {e["fullUrl"] for e in bundle["entry"]}
        assert observation["subject"]["reference"] in urls
        assert encounter["subject"]["reference"] in urls
        assert "chu-rabat.ma/" not in json.dumps(bundle)
        assert stack.fhir.invalid == 0

    def test_it_is_journalled_in_the_partition_of_its_normalised_patient(
        self, stack: LoopbackStack, api: httpx.Client
    ) -> None:
        """The edge's partition is the one the mapped envelope's partition key gives."""
        data = transaction()
        data["identifier"]["value"] = "TX-IT-0002"
        reply = post(api, data)
        assert reply.status_code == 202, reply.text
        envelope = envelope_id(reply)

        def stored() -> dict[str, Any] | None:
            found = api.get(f"/api/messages/{envelope}", params=REASON)
            return found.json() if found.status_code == 200 else None

        assert wait_until(stored, 60), stack.logs()
        record = stored()
        assert record is not None
        assert record["partition_key"] == f"{IPP}|IPP0077120"
        assert stack.settings is not None
        assert record["partition"] == keys.partition_of(
            record["partition_key"], stack.settings.partitions
        )

    def test_the_unmapped_report_lists_what_the_canonical_message_does_not_keep(
        self, stack: LoopbackStack, api: httpx.Client
    ) -> None:
        """Bundle.entry[n].request is reported by location, never silently dropped."""

        def report() -> dict[str, int]:
            fields: dict[str, int] = api.get(f"/api/unmapped/{ADAPTER}").json()["fields"]
            return fields

        assert wait_until(lambda: "Bundle.entry[0].request" in report(), 60), stack.logs()
        assert {"Bundle.entry[1].request", "Bundle.entry[2].request"} <= set(report())


class TestMessageBundle:
    def test_an_admit_message_reaches_the_mllp_subscriber_as_adt_a01_and_is_acknowledged(
        self, stack: LoopbackStack, api: httpx.Client
    ) -> None:
        """eventCoding v2-0003#A01 is the event ADT^A01: lab-legacy's ADT^* renders and sends it."""
        message = json.loads((REPO_ROOT / "mappings/tests/fhir_message.json").read_text("utf-8"))
        before = stack.lab.count
        reply = post(api, message)
        assert reply.status_code == 202, reply.text
        envelope = envelope_id(reply)
        assert wait_until(lambda: stack.lab.count > before, 60), stack.logs()
        adt = parse(stack.lab.messages[-1].text)
        assert adt.event == "ADT^A01"
        assert adt.msh.value(9, 3) == "ADT_A01"
        assert adt.get("PID-3.1") in {"BE123456", "IPP0042317"}

        def acknowledged() -> bool:
            stats = stack.redis.hgetall(keys.STATS)
            return int(stats.get(b"delivered:lab-legacy", 0)) >= 1

        assert wait_until(acknowledged, 30), stack.logs()
        record = api.get(f"/api/messages/{envelope}", params=REASON).json()
        assert record["event"] == "ADT^A01"
        assert api.get("/api/dead-letters/lab-legacy").json() == []


class TestRefusals:
    @pytest.mark.parametrize(
        ("body", "status", "element"),
        [
            pytest.param(b'{"resourceType": "Patient", ', 400, None, id="not-json"),
            pytest.param(
                json.dumps(
                    {
                        "resourceType": "Patient",
                        "identifier": [{"system": "http://chu-rabat.ma/ipp", "value": "IPP9"}],
                        "birthDate": "19/02/1986",
                    }
                ).encode(),
                422,
                "Patient.birthDate",
                id="invalid-r4",
            ),
            pytest.param(
                (REPO_ROOT / "mappings/tests/fhir_servicerequest_no_subject.json").read_bytes(),
                422,
                "ServiceRequest.subject",
                id="servicerequest-subject-is-1..1",
            ),
        ],
    )
    def test_invalid_fhir_is_an_operation_outcome_and_is_kept(
        self,
        stack: LoopbackStack,
        api: httpx.Client,
        body: bytes,
        status: int,
        element: str | None,
    ) -> None:
        """400/422 with an OperationOutcome; the body is kept in pl:rejected with the reason."""
        before = stack.redis.xlen(keys.REJECTED)
        reply = post(api, body)
        assert reply.status_code == status, reply.text
        outcome = reply.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["severity"] == "error"
        if element is not None:
            assert element in {e for i in outcome["issue"] for e in i.get("expression", [])}
        assert stack.redis.xlen(keys.REJECTED) == before + 1
        kept = api.get("/api/rejected", params={"limit": 1}).json()[0]
        assert kept["adapter"] == ADAPTER
        assert kept["reason"].startswith(f"HTTP {status}: ")
        assert kept["bytes"] == len(body)
        assert "1986" not in kept["reason"]

    def test_an_observation_without_its_patient_is_journalled_then_quarantined(
        self, stack: LoopbackStack, api: httpx.Client
    ) -> None:
        """Observation.subject is 0..1 in R4 but required here: kept, then quarantined."""
        observation = {
            "resourceType": "Observation",
            "id": "obs-no-subject-1",
            "status": "final",
            "code": {"coding": [{"system": "http://chu-rabat.ma/labo/codes", "code": "CRP"}]},
            "valueQuantity": {"value": 4, "unit": "mg/L"},
        }
        reply = post(api, observation)
        assert reply.status_code == 202, reply.text
        envelope = envelope_id(reply)

        def quarantined() -> dict[str, Any] | None:
            entries = api.get("/api/quarantine").json()
            return next((e for e in entries if e["envelope_id"] == envelope), None)

        assert wait_until(quarantined, 60), stack.logs()
        entry = quarantined()
        assert entry is not None
        assert entry["adapter"] == ADAPTER
        assert "patient" in entry["reason"]
        assert "Observation.subject" in entry["reason"]
        assert api.get(f"/api/messages/{envelope}", params=REASON).json()["state"] == "failed"


def test_the_fhir_site_registration_is_the_repository_file() -> None:
    """The stack serves adapters/chu-rabat-fhir.yaml as written (inbound http, format fhir)."""
    from broker.adapters.spec import load_adapters

    spec = next(a for a in load_adapters(REPO_ROOT / "adapters") if a.id == ADAPTER)
    assert (spec.direction, spec.transport, spec.format) == ("inbound", "http", "fhir")
    site = (REPO_ROOT / "mappings/fhir/sites/chu-rabat-fhir.yaml").read_text(encoding="utf-8")
    assert f"adapters: [{ADAPTER}]" in site
