"""Promises of the rule language: loops, conditions, value maps, type checks at load, cardinality."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.canonical import validate_bundle
from broker.errors import CanonicalError, MappingSpecError
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse

ROOT = Path(__file__).resolve().parents[2]
CTX = MapContext("env", "chu-rabat", received_at=datetime(2024, 3, 15, 10, 30, 5, tzinfo=UTC))
HEAD = """\
id: t
source: {format: hl7v2, events: [ADT^A01], versions: ["2.5.1"]}
"""
MSG = (
    "MSH|^~\\&|HIS|CHUIS|PASSERELLE|MS|20240315103000||ADT^A01^ADT_A01|M1|P|2.5.1\r"
    "PID|1||BE123456^^^MA^NNMAR||EL AMRANI^Fatima||19620312|X\r"
)


def load(tmp_path: Path, body: str, *, full: bool = False) -> MappingSet:
    (tmp_path / "m.yaml").write_text(HEAD + textwrap.dedent(body), encoding="utf-8")
    return MappingSet.load(tmp_path, full_validation=full)


def test_field_loop_gives_one_resource_per_repetition() -> None:
    """each: PV1-7(*) makes one Practitioner and one participant per attending doctor, linked pairwise."""
    text = (ROOT / "tests/samples/hl7v2/adt_a01_v251.hl7").read_bytes().decode()
    text = text.replace(
        "12345^BENNANI^Youssef^^^Dr", "12345^BENNANI^Youssef^^^Dr~67890^TAZI^Salma^^^Dr"
    )
    bundle = MappingSet.load(ROOT / "mappings").map_hl7v2(parse(text), CTX).bundle
    doctors = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Practitioner"
    ]
    encounter = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"
    )
    assert [d["name"][0]["family"] for d in doctors] == ["BENNANI", "TAZI"]
    assert [p["individual"]["reference"] for p in encounter["participant"]] == [
        f"urn:uuid:{d['id']}" for d in doctors
    ]
    validate_bundle(bundle)


def test_unknown_code_is_dropped_with_a_finding(tmp_path: Path) -> None:
    """A code missing from a value map (PID-8 = X) is left out with an unknown-code warning."""
    mappings = load(
        tmp_path,
        """\
        maps:
          g: {system: HL7 table 0001, values: {F: female, M: male}}
        resources:
          - role: patient
            type: Patient
            rules:
              - {target: gender, from: PID-8, map: g}
        """,
    )
    result = mappings.map_hl7v2(parse(MSG), CTX)
    assert "gender" not in result.bundle["entry"][1]["resource"]
    (finding,) = result.findings
    assert (finding.code, finding.location) == ("unknown-code", "PID-8")
    assert "HL7 table 0001" in finding.message


def test_condition_selects_the_rule(tmp_path: Path) -> None:
    """A rule with when: runs only when its condition holds."""
    mappings = load(
        tmp_path,
        """\
        resources:
          - role: patient
            type: Patient
            rules:
              - {target: gender, value: unknown}
              - {target: gender, value: female, when: {path: PID-8, in: [F, X]}}
              - {target: active, value: true, when: {path: PID-30, present: true}}
        """,
    )
    patient = mappings.map_hl7v2(parse(MSG), CTX).bundle["entry"][1]["resource"]
    assert patient["gender"] == "female"
    assert "active" not in patient


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        pytest.param(
            """\
        resources:
          - role: patient
            type: Patient
            rules:
              - {target: gender, from: PID-5, function: xpn_name}
        """,
            "resources[0].rules[0].function",
            "gives a FHIR HumanName but gender is a code",
            id="type-mismatch",
        ),
        pytest.param(
            """\
        maps:
          g: {values: {F: femme}}
        resources:
          - role: patient
            type: Patient
            rules:
              - {target: gender, from: PID-8, map: g}
        """,
            "maps.g.values.F",
            "not in the element's value set",
            id="map-value-outside-binding",
        ),
        pytest.param(
            """\
        resources:
          - role: patient
            type: Patient
            rules:
              - {target: birthDate, value: "12/03/1962"}
        """,
            "resources[0].rules[0].value",
            "not a valid FHIR date",
            id="bad-constant",
        ),
        pytest.param(
            """\
        resources:
          - role: patient
            type: Patient
            rules:
              - {target: "generalPractitioner[]", reference: nobody}
        """,
            "resources[0].rules[0].reference",
            "no resource has role",
            id="unknown-role",
        ),
        pytest.param(
            """\
        resources:
          - role: patient
            type: Patient
            each: PID-3
            rules:
              - {target: gender, value: female}
        """,
            "resources[0].each",
            "field loop",
            id="loop-without-star",
        ),
    ],
)
def test_load_time_checks(tmp_path: Path, body: str, key: str, reason: str) -> None:
    """Type, value-set, constant, role and loop mistakes are refused at load with the key."""
    with pytest.raises(MappingSpecError) as caught:
        load(tmp_path, body)
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert caught.value.line is not None


def test_missing_required_element_is_a_canonical_error(tmp_path: Path) -> None:
    """A resource without a required element (Encounter.status) is a CanonicalError naming it."""
    mappings = load(
        tmp_path,
        """\
        resources:
          - role: encounter
            type: Encounter
            rules:
              - {target: class, value: {code: IMP}}
        """,
    )
    with pytest.raises(CanonicalError) as caught:
        mappings.map_hl7v2(parse(MSG), CTX)
    assert caught.value.location == "Bundle.entry[1].resource.status"


def test_full_validation_mode_validates_every_resource(tmp_path: Path) -> None:
    """With full_validation the mapped Bundle also passes through fhir.resources per message."""
    body = """\
        resources:
          - role: patient
            type: Patient
            rules:
              - {target: birthDate, from: PID-7, function: date}
        """
    result = load(tmp_path, body, full=True).map_hl7v2(parse(decode(MSG.encode())), CTX)
    assert result.bundle["entry"][1]["resource"]["birthDate"] == "1962-03-12"


def test_failing_function_is_a_mapping_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception inside a transform becomes a MappingError naming the file, rule and source path."""
    from broker.errors import MappingError
    from broker.mapping import transforms

    def boom(values: object, env: object, args: object) -> str:
        raise ZeroDivisionError

    monkeypatch.setitem(transforms.INBOUND, "boom", transforms.Transform(boom, "string"))
    mappings = load(
        tmp_path,
        """\
        resources:
          - role: patient
            type: Patient
            rules:
              - {target: "name[]", rules: [{target: text, from: PID-5, function: boom}]}
        """,
    )
    with pytest.raises(MappingError) as caught:
        mappings.map_hl7v2(parse(MSG), CTX)
    err = caught.value
    assert err.mapping.endswith("m.yaml")
    assert err.source_path == "PID-5"
    assert "rules[0]" in (err.rule or "")
