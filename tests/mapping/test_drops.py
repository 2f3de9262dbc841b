"""Promises of the engine's malformed-segment rule (broker/mapping/hl7v2_in/drops.py), on small mappings.

The ORU^R01 cases are in tests/test_partial_messages.py; these cover the rest of the rule: a
field repetition is a droppable part too, references to a dropped resource are cut, and a
resource built on the whole message is never dropped (its failure quarantines the message).
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.canonical import validate_bundle
from broker.errors import CanonicalError
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import parse

MAPPING = """\
id: test-adt
source: {format: hl7v2, events: [ADT^A01], versions: ["2.5.1"]}
resources:
  - role: patient
    type: Patient
    require:
      - check: {path: PID-3, present: true}
        reason: PID-3 (patient identifier list) is required (v2.5.1 §3.4.2.3)
    rules:
      - {target: "identifier[]", from: "PID-3(*)", function: cx_identifier}
      - {target: "generalPractitioner[]", reference: doctor}
  - role: doctor
    type: Practitioner
    each: PV1-7(*)
    require:
      - check: {path: PV1-7.2, present: true}
        reason: an attending doctor needs a family name (XCN-2)
    rules:
      - {target: "identifier[]", from: PV1-7, function: xcn_identifier}
"""

MESSAGE = (
    "MSH|^~\\&|HIS|CHUIS|PASSERELLE|MS|20240402103000||ADT^A01^ADT_A01|D1|P|2.5.1\r"
    "PID|1||IPP0088231^^^CHUIS^PI||BENJELLOUN^Khadija||19780914|F\r"
    "PV1|1|I|||||48211^ALAOUI^Samira~48212~48213^IDRISSI^Karim\r"
)


@pytest.fixture(name="mappings")
def fixture_mappings(tmp_path: Path) -> MappingSet:
    (tmp_path / "hl7v2").mkdir()
    (tmp_path / "hl7v2" / "m.yaml").write_text(textwrap.dedent(MAPPING), encoding="utf-8")
    return MappingSet.load(tmp_path, full_validation=True)


CTX = MapContext("env-1", "chuis-adt", received_at=datetime(2024, 4, 2, tzinfo=UTC))


def test_a_malformed_field_repetition_is_dropped_and_its_references_cut(mappings):
    """PV1-7's second doctor has no family name: that Practitioner leaves, the others stay."""
    result = mappings.map_hl7v2(parse(MESSAGE), CTX)
    validate_bundle(result.bundle)
    resources = [e["resource"] for e in result.bundle["entry"]]
    doctors = [r for r in resources if r["resourceType"] == "Practitioner"]
    assert [d["identifier"][0]["value"] for d in doctors] == ["48211", "48213"]
    (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
    assert patient["generalPractitioner"] == [{"reference": f"urn:uuid:{d['id']}"} for d in doctors]
    (finding,) = [f for f in result.findings if f.code == "segment-dropped"]
    assert (finding.code, finding.location, finding.rule) == (
        "segment-dropped",
        "PV1-7(2)",
        "doctor require[1]",
    )
    assert "48212" not in finding.message


def test_every_repetition_dropped_leaves_no_empty_list(mappings):
    """With no doctor usable, Patient.generalPractitioner is left out (FHIR has no empty arrays)."""
    text = MESSAGE.replace("48211^ALAOUI^Samira~48212~48213^IDRISSI^Karim", "48211~48212")
    result = mappings.map_hl7v2(parse(text), CTX)
    validate_bundle(result.bundle)
    (patient,) = [e["resource"] for e in result.bundle["entry"][1:]]
    assert "generalPractitioner" not in patient
    assert [f.location for f in result.findings if f.code == "segment-dropped"] == [
        "PV1-7(1)",
        "PV1-7(2)",
    ]


def test_a_resource_of_the_whole_message_is_never_dropped(mappings):
    """The Patient is built on the message itself: its failed check quarantines the message."""
    text = MESSAGE.replace("IPP0088231^^^CHUIS^PI", "")
    with pytest.raises(CanonicalError, match=r"PID-3 \(patient identifier list\) is required"):
        mappings.map_hl7v2(parse(text), CTX)
