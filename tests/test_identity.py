"""Promises of broker.identity: one definition of patient identity, used everywhere."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from broker.adapters.spec import AdapterSpec
from broker.delivery.render import to_fhir_transaction
from broker.errors import MessageError
from broker.identity import IdentifierSystem, conditional_url, identifier_key, key, local_system
from broker.intake import fhir, hl7v2
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "tests/samples/hl7v2").glob("*.hl7")) + sorted(
    (ROOT / "mappings/tests").glob("*.hl7")
)
PLAIN = AdapterSpec(
    id="chu-rabat-adt",
    name="CHU Rabat",
    direction="inbound",
    transport="mllp",
    listen="127.0.0.1:2575",
)
CONFIGURED = PLAIN.model_copy(
    update={
        "identifier_systems": [
            IdentifierSystem(type="EPI", system="https://chu-rabat.ma/fhir/sid/epi"),
            IdentifierSystem(
                authority="CHUIS", type="PI", system="https://chu-rabat.ma/fhir/sid/ipp"
            ),
        ]
    }
)


@pytest.fixture(scope="module", name="mappings")
def fixture_mappings() -> MappingSet:
    return MappingSet.load(ROOT / "mappings")


def _three_keys(mappings: MappingSet, sample: Path, adapter: AdapterSpec) -> tuple[str, str, str]:
    """The intake partition key, the mapped (dead-letter hold) key and the delivered Patient's."""
    message = parse(decode(sample.read_bytes()))
    ctx = MapContext(
        "env",
        adapter.id,
        received_at=datetime(2024, 1, 1, tzinfo=UTC),
        identifier_systems=tuple(adapter.identifier_systems),
    )
    result = mappings.map_hl7v2(message, ctx)
    tx = to_fhir_transaction(result.bundle)
    patient = next(e for e in tx["entry"] if e["resource"]["resourceType"] == "Patient")
    url = unquote(patient["request"]["url"].removeprefix("Patient?identifier="))
    return hl7v2.partition_key(message, adapter), result.partition_key, url


def _mappable(mappings: MappingSet, sample: Path) -> bool:
    try:
        message = parse(decode(sample.read_bytes()))
        mappings.map_hl7v2(
            message, MapContext("e", "x", received_at=datetime(2024, 1, 1, tzinfo=UTC))
        )
    except MessageError:
        return False
    return message.first("PID") is not None


@pytest.mark.parametrize("adapter", [PLAIN, CONFIGURED], ids=["no-config", "identifier_systems"])
def test_partition_hold_and_conditional_url_agree(
    mappings: MappingSet, adapter: AdapterSpec
) -> None:
    """For every sample with a patient: intake partition key == hold key == Patient conditional URL."""
    checked = 0
    for sample in SAMPLES:
        if not _mappable(mappings, sample):
            continue
        intake, hold, url = _three_keys(mappings, sample, adapter)
        assert intake == hold == url, sample.name
        checked += 1
    assert checked > 30


def test_same_person_same_sender_is_one_patient(mappings: MappingSet) -> None:
    """PID-3 4019070^^^^EPI in an ORM and an ORU from one adapter: one Patient URL, with a system."""
    keys = {
        _three_keys(mappings, ROOT / "tests/samples/hl7v2" / name, PLAIN)[2]
        for name in ("orm_o01_shared_placer.hl7", "oru_r01_shared_ids.hl7")
    }
    assert keys == {"urn:passerelle:adapter:chu-rabat-adt:id:epi|4019070"}


def test_identifier_systems_of_the_adapter_come_first(mappings: MappingSet) -> None:
    """identifier_systems names the sender's local type EPI: that URI, in all three keys."""
    keys = _three_keys(mappings, ROOT / "tests/samples/hl7v2/orm_o01_shared_placer.hl7", CONFIGURED)
    assert set(keys) == {"https://chu-rabat.ma/fhir/sid/epi|4019070"}


def test_national_systems_keep_their_uris(mappings: MappingSet) -> None:
    """A CIN (CX-5 NNMAR, authority MA) stays https://passerelle.ma/fhir/sid/cin."""
    keys = _three_keys(mappings, ROOT / "tests/samples/hl7v2/adt_a01_v251.hl7", PLAIN)
    assert keys[2] == "https://passerelle.ma/fhir/sid/cin|BE123456"


@pytest.mark.parametrize(
    ("type_code", "authority", "expected"),
    [
        pytest.param("", "", "urn:passerelle:adapter:lab-a:id:local", id="nothing"),
        pytest.param("EPI", "", "urn:passerelle:adapter:lab-a:id:epi", id="type"),
        pytest.param(
            "MR",
            "Hôpital Ibn Sina",
            "urn:passerelle:adapter:lab-a:id:mr:h-pital-ibn-sina",
            id="both",
        ),
    ],
)
def test_local_system_rule(type_code: str, authority: str, expected: str) -> None:
    """The documented namespace: adapter, then the type (or local), then the authority, as slugs."""
    assert local_system("lab-a", type_code, authority) == expected


FHIR_CASES = sorted(
    p for p in (ROOT / "mappings/tests").rglob("*.json") if not p.name.endswith(".expected.json")
)
FHIR_RULES = (
    IdentifierSystem(local="http://chu-rabat.ma/cin", system="https://chu-rabat.ma/fhir/sid/cin"),
    IdentifierSystem(local="http://chu-rabat.ma/ipp", system="https://chu-rabat.ma/fhir/sid/ipp"),
)


@pytest.mark.parametrize("rules", [(), FHIR_RULES], ids=["no-config", "identifier_systems"])
def test_fhir_edge_hold_and_conditional_url_agree(mappings: MappingSet, rules: tuple) -> None:
    """FHIR input: the HTTP edge's key == the mapped (hold) key == the Patient's conditional URL."""
    assert mappings.fhir is not None
    checked = 0
    for case in FHIR_CASES:
        source = case.parent.name if case.parent.name != "tests" else "chu-rabat-fhir"
        data = json.loads(case.read_bytes())
        ctx = MapContext(
            "env", source, received_at=datetime(2024, 1, 1, tzinfo=UTC), identifier_systems=rules
        )
        try:
            result = mappings.map_fhir(json.loads(case.read_bytes()), ctx)
        except MessageError:
            continue
        adapter = AdapterSpec(
            id=source,
            name=source,
            direction="inbound",
            transport="http",
            format="fhir",
            identifier_systems=list(rules),
        )
        edge = fhir.partition_key(data, adapter, mappings, "env")
        assert edge == result.partition_key, case.name
        patients = [
            e
            for e in to_fhir_transaction(result.bundle)["entry"]
            if e["resource"]["resourceType"] == "Patient"
        ]
        if patients:
            url = unquote(patients[0]["request"]["url"].removeprefix("Patient?identifier="))
            assert url == result.partition_key, case.name
            checked += 1
    assert checked >= 5


def test_fhir_identifier_without_system_gets_the_adapter_namespace(mappings: MappingSet) -> None:
    """A FHIR Patient.identifier without system (type MR): urn:passerelle:adapter:<id>:id:mr."""
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            {"type": {"coding": [{"code": "MR"}]}, "value": "HIS-88120"},
            {"system": "http://chu-rabat.ma/ipp", "value": "IPP0093310"},
        ],
        "name": [{"family": "BENJELLOUN", "given": ["Omar"]}],
    }
    ctx = MapContext(
        "env",
        "his-fhir",
        received_at=datetime(2024, 1, 1, tzinfo=UTC),
        identifier_systems=FHIR_RULES,
    )
    result = mappings.map_fhir(patient, ctx)
    mapped = next(
        e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    assert [(i["system"], i["value"]) for i in mapped["identifier"]] == [
        ("urn:passerelle:adapter:his-fhir:id:mr", "HIS-88120"),
        ("https://chu-rabat.ma/fhir/sid/ipp", "IPP0093310"),
        ("urn:passerelle:adapter:his-fhir:resource:Patient", "p1"),  # the sender's id, last
    ]
    assert result.partition_key == "urn:passerelle:adapter:his-fhir:id:mr|HIS-88120"


def test_an_authority_rule_leaves_visit_numbers_their_own_system(mappings: MappingSet) -> None:
    """identifier_systems {authority: CHUIS}: the IPP takes it, PV1-19 (CHUIS^VN) stays a visit."""
    rules = (IdentifierSystem(authority="CHUIS", system="https://chu-rabat.ma/fhir/sid/chuis"),)
    message = parse(decode((ROOT / "tests/samples/hl7v2/adt_a01_v251.hl7").read_bytes()))
    ctx = MapContext(
        "env",
        "chu-rabat-adt",
        received_at=datetime(2024, 1, 1, tzinfo=UTC),
        identifier_systems=rules,
    )
    bundle = mappings.map_hl7v2(message, ctx).bundle
    systems = {
        e["resource"]["resourceType"]: [i["system"] for i in e["resource"].get("identifier", [])]
        for e in bundle["entry"]
    }
    assert systems["Patient"][:2] == [
        "https://passerelle.ma/fhir/sid/cin",  # authority MA: not this rule
        "https://chu-rabat.ma/fhir/sid/chuis",
    ]
    assert systems["Encounter"] == ["https://passerelle.ma/fhir/sid/visit/chuis"]


def test_the_conditional_url_is_the_key_as_a_token_search() -> None:
    """Unescaped, the conditional URL is Type?identifier=<key>; the value's own | is escaped."""
    system, value = "https://chu-rabat.ma/fhir/sid/ipp", "IPP 0093|310"
    url = conditional_url("Patient", system, value)
    assert url.count("|") == 1
    assert unquote(url) == f"Patient?identifier={key(system, value)}"


@pytest.mark.parametrize(
    ("identifiers", "expected"),
    [
        pytest.param(
            [{"value": "no-system"}, {"system": "urn:x", "value": "1"}], "urn:x|1", id="list"
        ),
        pytest.param({"system": "urn:x", "value": "2"}, "urn:x|2", id="one-identifier"),
        pytest.param([{"system": "urn:x"}], None, id="no-value"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_identifier_key_is_the_first_identifier_with_a_system_and_a_value(
    identifiers: object, expected: str | None
) -> None:
    """The identity of a Patient (or a reference's identifier): the conditional identifier."""
    assert identifier_key(identifiers) == expected


@pytest.mark.parametrize(
    ("system", "value"),
    [
        ("https://passerelle.ma/fhir/sid/cin", "BK123456"),
        ("urn:oid:2.16.504.1.1", "IPP-0042_a.b~c"),
        ("https://passerelle.ma/fhir/sid/ipp", "12 34"),
        ("https://x.ma/a b?c=d&e#f", "a|b/c:d"),
        ("urn:passerelle:local:chu-rabat", "محمد-1"),
        ("https://x.ma/%41", "100%"),
        ("", ""),
    ],
)
def test_conditional_url_escapes_as_quote_does(system: str, value: str) -> None:
    """Plain texts skip ``quote``; every other text is escaped exactly as ``quote`` escapes it."""
    expected = f"Patient?identifier={quote(system, safe=':/')}|{quote(value, safe='')}"
    assert conditional_url("Patient", system, value) == expected
