"""Promises of the outbound ORU^R01 mapping: segment groups, value types and versions.

The expected segments are written by hand from the canonical Bundle's meaning and the HL7 v2.5.1
field definitions (cited beside them). The round trip through the inbound mapping is an extra
check only (``test_round_trip_extra_...``): a mapping and its own inverse can agree on a mistake.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest

from broker.errors import NoMappingError
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "hl7v2"
UCUM = "http://unitsofmeasure.org"
PATIENT = "urn:uuid:00000000-0000-4000-8000-000000000001"
REPORT = "urn:uuid:00000000-0000-4000-8000-000000000002"


def _obs(n: int, **value: Any) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:00000000-0000-4000-8000-0000000001{n:02d}",
        "resource": {
            "resourceType": "Observation",
            "id": f"00000000-0000-4000-8000-0000000001{n:02d}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": f"{n}-0", "display": "T"}]},
            "subject": {"reference": PATIENT},
            **value,
        },
    }


def _bundle() -> dict[str, Any]:
    """A synthetic canonical ORU: one patient (CIN BE123456), one report, seven value types."""
    observations = [
        _obs(
            1,
            valueQuantity={"value": 5.4, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
            referenceRange=[{"low": {"value": 3.9}, "high": {"value": 6.1}}],
            interpretation=[{"coding": [{"code": "N"}]}],
            effectiveDateTime="2024-03-16T08:15:00+01:00",
            note=[{"text": "Patient à jeun"}, {"text": "Second commentaire"}],
        ),
        _obs(2, valueQuantity={"value": 5, "comparator": "<", "unit": "mg/L"}, status="corrected"),
        _obs(3, valueString="Prélèvement hémolysé", status="preliminary"),
        _obs(4, valueCodeableConcept={"coding": [{"code": "A", "display": "Groupe A"}]}),
        _obs(5, valueDateTime="2024-03-16T07:00:00+00:00"),
        _obs(6, valueRange={"low": {"value": 5, "unit": "g/L"}, "high": {"value": 10}}),
        _obs(
            7,
            valueRatio={"numerator": {"value": 1}, "denominator": {"value": 256}},
            interpretation=[{"coding": [{"code": "H"}]}, {"coding": [{"code": "A"}]}],
        ),
    ]
    report = {
        "fullUrl": REPORT,
        "resource": {
            "resourceType": "DiagnosticReport",
            "id": "00000000-0000-4000-8000-000000000002",
            "identifier": [{"system": "urn:x", "value": "LAB-2024-55120"}],
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8"}]},
            "subject": {"reference": PATIENT},
            "effectiveDateTime": "2024-03-16T08:00:00+00:00",
            # Not in Bundle order: OBX follow DiagnosticReport.result.
            "result": [{"reference": o["fullUrl"]} for o in reversed(observations)],
        },
    }
    patient = {
        "fullUrl": PATIENT,
        "resource": {
            "resourceType": "Patient",
            "id": "00000000-0000-4000-8000-000000000001",
            "identifier": [
                {"system": "https://passerelle.ma/fhir/sid/cin", "value": "BE123456"},
            ],
            "name": [{"family": "EL AMRANI", "given": ["Fatima"], "use": "official"}],
            "birthDate": "1962-03-12",
            "gender": "female",
        },
    }
    header = {
        "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000000",
        "resource": {
            "resourceType": "MessageHeader",
            "eventCoding": {"code": "R01"},
            "source": {"endpoint": "urn:x"},
        },
    }
    return {
        "resourceType": "Bundle",
        "type": "message",
        "timestamp": "2024-03-16T09:00:00+00:00",
        "entry": [header, patient, report, *observations],
    }


def _render(mappings: MappingSet, bundle: dict[str, Any], version: str) -> list[str]:
    text = mappings.render_hl7v2(
        bundle,
        version=version,
        control_id="LAB00001",
        receiving_application="LAB",
        receiving_facility="CHUIS",
    )
    assert text.endswith("\r")
    return text.rstrip("\r").split("\r")


# Written by hand from _bundle()'s meaning and HL7 v2.5.1 (ch. 2 MSH, NTE; ch. 3 PID; ch. 7 OBR,
# OBX; data types ch. 2A), one line per segment of the ORU_R01 structure (§7.3.1):
V251 = [
    # MSH (§2.14.9): MSH-3 PASSERELLE, MSH-5/6 LAB and CHUIS, MSH-7 the Bundle's timestamp (DTM),
    # MSH-9 ORU^R01^ORU_R01 (table 0354), MSH-10 control id, MSH-11 P, MSH-12 2.5.1, MSH-18
    # UNICODE UTF-8 (table 0211): sent in UTF-8, the default subscriber charset.
    "MSH|^~\\&|PASSERELLE||LAB|CHUIS|20240316090000+0000||ORU^R01^ORU_R01|LAB00001|P|2.5.1"
    "||||||UNICODE UTF-8",
    # PID (§3.4.2): PID-3 the CIN as CX (CX-4 MA, CX-5 NNMAR), PID-5 XPN family^given with XPN-7 L
    # (official, table 0200), PID-7 birth date, PID-8 F (table 0001).
    "PID|1||BE123456^^^MA^NNMAR||EL AMRANI^Fatima^^^^^L||19620312|F",
    # OBR (§7.4.1): OBR-1 set id, OBR-3 filler order number LAB-2024-55120, OBR-4 universal
    # service id CE code^text^LN (LOINC, table 0396), OBR-7 observation date/time, OBR-25
    # result status F final (table 0123).
    "OBR|1||LAB-2024-55120|24323-8^^LN|||20240316080000+0000||||||||||||||||||F",
    # OBX (§7.4.2), in DiagnosticReport.result order (7 first): OBX-2 value type (table 0125),
    # OBX-3 observation id CE, OBX-5 value, OBX-6 units CE, OBX-7 references range, OBX-8
    # abnormal flags (table 0078, repeating in v2.5.1), OBX-11 result status (table 0085), OBX-14
    # date/time of the observation.
    # 7: ratio 1:256 is SN (§2A.75: SN-2 num1, SN-3 separator ":", SN-4 num2), flags H and A.
    "OBX|1|SN|7-0^T^LN||^1^:^256|||H~A|||F",
    # 6: range 5-10 g/L is SN with separator "-"; a unit without UCUM is CE-2 text only.
    "OBX|2|SN|6-0^T^LN||^5^-^10|^g/L|||||F",
    # 5: a dateTime value is TS.
    "OBX|3|TS|5-0^T^LN||20240316070000+0000||||||F",
    # 4: a coded value is CWE code^text^L (L: local code, table 0396).
    "OBX|4|CWE|4-0^T^LN||A^Groupe A^L||||||F",
    # 3: a string is ST; preliminary is P.
    "OBX|5|ST|3-0^T^LN||Prélèvement hémolysé||||||P",
    # 2: "< 5 mg/L" is SN comparator^num1; corrected is C.
    "OBX|6|SN|2-0^T^LN||<^5|^mg/L|||||C",
    # 1: 5.4 mmol/L is NM with UCUM units (code^text^UCUM), range 3.9-6.1 (§7.4.2.7
    # lower-upper), flag N, final, observed 2024-03-16 08:15 +01:00.
    "OBX|7|NM|1-0^T^LN||5.4|mmol/L^mmol/L^UCUM|3.9-6.1|N|||F|||20240316081500+0100",
    # NTE (§2.14.10) after its OBX: NTE-1 set id, NTE-3 the comment, one per Observation.note.
    "NTE|1||Patient à jeun",
    "NTE|2||Second commentaire",
]


def test_oru_v251_is_written_field_by_field(mappings: MappingSet) -> None:
    """v2.5.1: OBR per report, OBX per result in result order, each field as written by hand."""
    assert _render(mappings, _bundle(), "2.5.1") == V251


def test_oru_v23_is_written_field_by_field(mappings: MappingSet) -> None:
    """v2.3: no MSH-9.3, coded values are CE, OBR-27 quantity 1 (required in v2.3)."""
    expected = [line.replace("|CWE|", "|CE|") for line in V251]
    expected[0] = expected[0].replace("ORU^R01^ORU_R01", "ORU^R01").replace("2.5.1", "2.3")
    expected[0] = expected[0].replace("UNICODE UTF-8", "UNICODE")  # table 0211 of v2.3
    expected[2] += "||1"
    assert _render(mappings, _bundle(), "2.3") == expected


def test_oru_v26_writes_dtm_and_v24_one_abnormal_flag(mappings: MappingSet) -> None:
    """v2.6 writes DTM for a dateTime value; v2.4's OBX-8 does not repeat (first flag only)."""
    v26 = _render(mappings, _bundle(), "2.6")
    assert v26[5].startswith("OBX|3|DTM|")
    v24 = _render(mappings, _bundle(), "2.4")
    assert v24[3] == "OBX|1|SN|7-0^T^LN||^1^:^256|||H|||F"
    assert v24[6].startswith("OBX|4|CE|")


def test_a_version_the_mapping_does_not_write_is_refused(mappings: MappingSet) -> None:
    """MSH-12 outside target.versions is a NoMappingError that names the versions written."""
    with pytest.raises(NoMappingError, match=r"not v2\.7\.1"):
        _render(mappings, _bundle(), "2.7.1")


def test_reports_follow_their_patient(mappings: MappingSet, ctx: MapContext) -> None:
    """Two patients: each PID is followed by the OBR of its own reports (linked_by subject)."""
    inbound = parse(decode((SAMPLES / "oru_r01_two_patients.hl7").read_bytes()))
    bundle = mappings.map_hl7v2(inbound, ctx).bundle
    names = [line[:3] for line in _render(mappings, bundle, "2.5.1")]
    assert names == ["MSH", "PID", "OBR", "OBX", "PID", "OBR", "OBX", "OBX", "NTE"]


def test_an_absent_result_reference_writes_no_obx(mappings: MappingSet) -> None:
    """A result reference that resolves to nothing in the Bundle is skipped, not an empty OBX."""
    bundle = _bundle()
    bundle = deepcopy(bundle)
    report = bundle["entry"][2]["resource"]
    report["result"] = [{"reference": "urn:uuid:missing"}, *report["result"][-1:]]
    lines = _render(mappings, bundle, "2.5.1")
    assert [line[:5] for line in lines[3:]] == ["OBX|1", "NTE|1", "NTE|2"]


def _observations(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    keep = ("status", "code", "effectiveDateTime", "interpretation", "note", "referenceRange")
    found = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Observation":
            value = {k: v for k, v in resource.items() if k.startswith("value")}
            found.append({**{k: resource.get(k) for k in keep}, **value})
    return found


@pytest.mark.parametrize("name", ["oru_r01_20obx.hl7", "oru_r01_two_patients.hl7"])
@pytest.mark.parametrize("version", ["2.5.1", "2.3"])
def test_round_trip_extra_keeps_the_observations(
    mappings: MappingSet, ctx: MapContext, name: str, version: str
) -> None:
    """Extra (not the oracle): ORU → canonical → ORU → canonical keeps the observations."""
    inbound = parse(decode((SAMPLES / name).read_bytes()))
    first = mappings.map_hl7v2(inbound, ctx).bundle
    text = mappings.render_hl7v2(
        first,
        version=version,
        control_id=inbound.control_id,
        receiving_application="LAB",
        receiving_facility="CHUIS",
    )
    again = parse(text)
    assert again.version == version
    second = mappings.map_hl7v2(again, ctx).bundle
    assert _observations(second) == _observations(first)
