"""Promises of delivery rendering: idempotent FHIR transactions and HL7 v2 text."""

from __future__ import annotations

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
    assert urls[2].startswith(
        "Practitioner/"
    )  # no identifier with a system: written by its stable id
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
        "Observation?identifier=https://passerelle.ma/fhir/sid/lab-result/labchuis|LAB-2024-55121-2345-7"
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
