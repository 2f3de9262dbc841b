"""Promises of delivery rendering: idempotent FHIR transactions and HL7 v2 text."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.delivery.render import to_fhir_transaction, to_hl7v2
from broker.errors import CanonicalError
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse

ROOT = Path(__file__).resolve().parents[2]
CTX = MapContext("env", "chu-rabat", received_at=datetime(2024, 3, 15, 10, 30, 5, tzinfo=UTC))


@pytest.fixture(scope="module", name="mappings")
def fixture_mappings() -> MappingSet:
    return MappingSet.load(ROOT / "mappings")


def canonical(mappings: MappingSet, name: str) -> dict:
    return mappings.map_hl7v2(
        parse(decode((ROOT / "tests/samples/hl7v2" / name).read_bytes())), CTX
    ).bundle


def test_transaction_uses_conditional_updates(mappings: MappingSet) -> None:
    """Every entry is a PUT conditional on its business identifier, and the MessageHeader is gone."""
    tx = to_fhir_transaction(canonical(mappings, "adt_a01_v251.hl7"))
    assert tx["type"] == "transaction"
    urls = [e["request"]["url"] for e in tx["entry"]]
    assert all(e["request"]["method"] == "PUT" for e in tx["entry"])
    assert urls[0] == "Patient?identifier=https://passerelle.ma/fhir/sid/cin|BE123456"
    assert urls[1] == "Encounter?identifier=https://passerelle.ma/fhir/sid/visit/chuis|V2024-000781"
    # XCN-1 without an authority system: the adapter's namespace, never a client id.
    assert urls[2].startswith("Practitioner?identifier=urn:passerelle:adapter:chu-rabat:id:local")
    assert all(e["resource"]["resourceType"] != "MessageHeader" for e in tx["entry"])
    assert "id" not in tx["entry"][0]["resource"]


def test_transaction_references_stay_consistent(mappings: MappingSet) -> None:
    """References inside the transaction point to fullUrls of its own entries."""
    tx = to_fhir_transaction(canonical(mappings, "oru_r01_two_patients.hl7"))
    urls = {e["fullUrl"] for e in tx["entry"]}
    for entry in tx["entry"]:
        resource = entry["resource"]
        refs = [resource.get("subject", {}).get("reference")] + [
            r["reference"] for r in resource.get("result", [])
        ]
        assert all(ref in urls for ref in refs if ref)
    observation = next(e for e in tx["entry"] if e["resource"]["resourceType"] == "Observation")
    assert observation["request"]["url"] == (
        "Observation?identifier=https://passerelle.ma/fhir/sid/lab-result/labchuis"
        "|LAB-2024-55121-14749-6-1-14749-6"
    )


def test_transaction_is_deterministic(mappings: MappingSet) -> None:
    """Re-delivering the same message gives the identical transaction (no duplicates on the server)."""
    first = to_fhir_transaction(canonical(mappings, "oru_r01_20obx.hl7"))
    assert first == to_fhir_transaction(canonical(mappings, "oru_r01_20obx.hl7"))


def test_transaction_does_not_modify_the_canonical_bundle(mappings: MappingSet) -> None:
    """The canonical Bundle given is left unchanged."""
    bundle = canonical(mappings, "adt_a01_v251.hl7")
    before = repr(bundle)
    to_fhir_transaction(bundle)
    assert repr(bundle) == before


def test_transaction_refuses_other_bundles() -> None:
    """Only a message Bundle can become a transaction."""
    with pytest.raises(CanonicalError):
        to_fhir_transaction({"resourceType": "Bundle", "type": "collection"})


def test_to_hl7v2(mappings: MappingSet) -> None:
    """to_hl7v2 renders ER7 with the given version, control id and receiver."""
    text = to_hl7v2(
        canonical(mappings, "adt_a01_v251.hl7"),
        mappings,
        version="2.5.1",
        control_id="C1",
        receiving_application="DPI",
        receiving_facility="CHUIS",
    )
    message = parse(text)
    assert (message.control_id, message.version, message.msh.value(5)) == ("C1", "2.5.1", "DPI")


def _urls(tx: dict) -> list[str]:
    return [e["request"]["url"] for e in tx["entry"]]


def _of_type(tx: dict, resource_type: str) -> list[dict]:
    return [e for e in tx["entry"] if e["resource"]["resourceType"] == resource_type]


class TestIdempotentTransactions:
    """Issue 8: no two entries share a conditional URL, and no entry relies on a client id."""

    def test_orders_sharing_a_placer_number_are_distinct(self, mappings: MappingSet) -> None:
        """Three OBR under one ORC with placer P1234 give three ServiceRequests, three URLs."""
        tx = to_fhir_transaction(canonical(mappings, "orm_o01_shared_placer.hl7"))
        orders = _of_type(tx, "ServiceRequest")
        assert len(orders) == 3
        assert len({e["request"]["url"] for e in orders}) == 3
        assert orders[0]["request"]["url"] == (
            "ServiceRequest?identifier=https://passerelle.ma/fhir/sid/order/his|P1234-GLY"
        )
        # The IG's PLAC identifier is kept for searches by the real placer number.
        assert all(
            {"system": "https://passerelle.ma/fhir/sid/order-placer/his", "value": "P1234"}
            in [{k: i[k] for k in ("system", "value")} for i in e["resource"]["identifier"]]
            for e in orders
        )
        assert len(set(_urls(tx))) == len(tx["entry"])

    def test_repeated_obx_set_ids_and_shared_order_numbers(self, mappings: MappingSet) -> None:
        """Two OBR sharing P1234/FIL5001 and OBX repeating set id 1: every result kept, URLs unique."""
        bundle = canonical(mappings, "oru_r01_shared_ids.hl7")
        tx = to_fhir_transaction(bundle)
        assert len(set(_urls(tx))) == len(tx["entry"])
        observations = _of_type(tx, "Observation")
        assert len(observations) == 4  # nothing merged away: the two creatinine values differ
        assert sorted(o["resource"]["valueQuantity"]["value"] for o in observations) == [
            5.1,
            12.9,
            71,
            73,
        ]
        assert len(_of_type(tx, "DiagnosticReport")) == 2

    def test_identifier_without_assigning_authority_gets_the_adapter_namespace(
        self, mappings: MappingSet
    ) -> None:
        """PID-3 4019070^^^^EPI: Patient?identifier=urn:passerelle:adapter:<adapter>:id:epi|4019070."""
        tx = to_fhir_transaction(canonical(mappings, "orm_o01_shared_placer.hl7"))
        assert _of_type(tx, "Patient")[0]["request"]["url"] == (
            "Patient?identifier=urn:passerelle:adapter:chu-rabat:id:epi|4019070"
        )

    def test_resource_without_identifier_gets_a_passerelle_identifier(
        self, mappings: MappingSet
    ) -> None:
        """An Encounter without PV1-19 is written by urn:passerelle:id and its stable id, no client id."""
        bundle = canonical(mappings, "orm_o01_shared_placer.hl7")
        encounter = next(
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"
        )
        assert "identifier" not in encounter
        entry = _of_type(to_fhir_transaction(bundle), "Encounter")[0]
        assert entry["request"] == {
            "method": "PUT",
            "url": f"Encounter?identifier=urn:passerelle:id|{encounter['id']}",
        }
        assert entry["resource"]["identifier"] == [
            {"system": "urn:passerelle:id", "value": encounter["id"]}
        ]
        assert "id" not in entry["resource"]
        assert not any("?" not in url for url in _urls(to_fhir_transaction(bundle)))

    def test_client_ids_when_the_subscriber_allows_them(self, mappings: MappingSet) -> None:
        """client_ids: a resource without identifier is PUT Type/<id> and keeps its id."""
        bundle = canonical(mappings, "orm_o01_shared_placer.hl7")
        entry = _of_type(to_fhir_transaction(bundle, client_ids=True), "Encounter")[0]
        assert entry["request"]["url"] == f"Encounter/{entry['resource']['id']}"
        assert "identifier" not in entry["resource"]

    def test_guard_separates_different_resources_sharing_an_identifier(self) -> None:
        """Two different Observations with one identifier: the second is written by its own."""
        shared = {"system": "https://lab.example/sid", "value": "FIL5001-1"}
        bundle = _message(
            {"resourceType": "Observation", "id": "o1", "identifier": [shared], "status": "final"},
            {
                "resourceType": "Observation",
                "id": "o2",
                "identifier": [shared],
                "status": "amended",
            },
        )
        tx = to_fhir_transaction(bundle)
        assert _urls(tx) == [
            "Observation?identifier=https://lab.example/sid|FIL5001-1",
            "Observation?identifier=urn:passerelle:id|o2",
        ]
        assert tx["entry"][1]["resource"]["identifier"] == [
            {"system": "urn:passerelle:id", "value": "o2"}
        ]

    def test_guard_merges_the_same_resource_mapped_twice(self) -> None:
        """One practitioner in two roles is one entry; references point at the one kept."""
        ident = {"system": "urn:passerelle:adapter:a:id:local", "value": "12345"}
        bundle = _message(
            {"resourceType": "Practitioner", "id": "p1", "identifier": [ident]},
            {"resourceType": "Practitioner", "id": "p2", "identifier": [ident]},
            {
                "resourceType": "ServiceRequest",
                "id": "s1",
                "status": "active",
                "intent": "order",
                "subject": {"reference": "urn:uuid:p1"},
                "requester": {"reference": "urn:uuid:p2"},
            },
        )
        before = repr(bundle)
        tx = to_fhir_transaction(bundle)
        assert len(_of_type(tx, "Practitioner")) == 1
        order = _of_type(tx, "ServiceRequest")[0]["resource"]
        assert order["requester"] == {"reference": "urn:uuid:p1"}
        assert repr(bundle) == before  # references are redirected in copies only
        assert len(set(_urls(tx))) == len(tx["entry"])


def _message(*resources: dict) -> dict:
    header = {"resourceType": "MessageHeader", "id": "h"}
    return {
        "resourceType": "Bundle",
        "type": "message",
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in (header, *resources)],
    }


def _fhir(mappings: MappingSet, name: str) -> dict:
    data = json.loads((ROOT / "mappings/tests" / name).read_text(encoding="utf-8"))
    return mappings.map_fhir(data, CTX).bundle


class TestReferencesToTheSendersResources:
    """FHIR input's references to resources it does not carry (docs/mappings.md)."""

    def test_a_logical_reference_becomes_a_conditional_reference_when_asked(
        self, mappings: MappingSet
    ) -> None:
        """``Practitioner/pr-77`` of the sender: ``Practitioner?identifier=<its sender id>``;
        the patient, given with her CIN, by the CIN; the canonical Bundle is not changed."""
        bundle = _fhir(mappings, "fhir_appointment.json")
        before = repr(bundle)
        tx = to_fhir_transaction(bundle, conditional_references=True)
        patient, doctor = (
            p["actor"] for p in _of_type(tx, "Appointment")[0]["resource"]["participant"]
        )
        assert (
            patient["reference"] == "Patient?identifier=https://passerelle.ma/fhir/sid/cin|BE123456"
        )
        assert doctor["reference"] == (
            "Practitioner?identifier=urn:passerelle:adapter:chu-rabat:resource:Practitioner|pr-77"
        )
        assert doctor["display"] == "Dr. Hassan TAZI"
        assert repr(bundle) == before

    def test_without_it_the_sender_ids_never_reach_the_server_as_references(
        self, mappings: MappingSet
    ) -> None:
        """By default a logical reference stays logical: no ``Patient/pat-1001`` that would name
        nothing, or another patient, on the receiving server."""
        tx = to_fhir_transaction(_fhir(mappings, "fhir_appointment.json"))
        doctor = _of_type(tx, "Appointment")[0]["resource"]["participant"][1]["actor"]
        assert doctor == {
            "type": "Practitioner",
            "identifier": {
                "system": "urn:passerelle:adapter:chu-rabat:resource:Practitioner",
                "value": "pr-77",
            },
            "display": "Dr. Hassan TAZI",
        }
        assert "pat-1001" not in json.dumps([e["resource"] for e in tx["entry"]]).replace(
            "resource:Patient|", ""
        )

    def test_a_reference_to_an_entry_of_the_same_input_stays_the_entrys_urn_uuid(
        self, mappings: MappingSet
    ) -> None:
        """In a batch, ``Patient/pat-2002`` is the Patient entry: its fullUrl, not a search."""
        tx = to_fhir_transaction(_fhir(mappings, "fhir_batch.json"), conditional_references=True)
        patient = _of_type(tx, "Patient")[0]
        condition = _of_type(tx, "Condition")[0]["resource"]
        assert condition["subject"] == {"reference": patient["fullUrl"]}
        assert patient["fullUrl"].startswith("urn:uuid:")

    def test_the_identifier_is_escaped_and_identifiers_themselves_are_left_alone(self) -> None:
        """``|`` and spaces in a value are escaped (a token search, R4 §3.1.1.5.7); an
        Identifier, whose ``type`` is a CodeableConcept, is not a Reference."""
        mrn = {"type": {"text": "MR"}, "system": "urn:x", "value": "7"}
        bundle = _message(
            {
                "resourceType": "Observation",
                "id": "o1",
                "status": "final",
                "identifier": [mrn],
                "subject": {"type": "Patient", "identifier": {"system": "urn:x", "value": "a b|c"}},
            }
        )
        resource = to_fhir_transaction(bundle, conditional_references=True)["entry"][0]["resource"]
        assert resource["subject"]["reference"] == "Patient?identifier=urn:x|a%20b%7Cc"
        assert resource["identifier"] == [mrn]
