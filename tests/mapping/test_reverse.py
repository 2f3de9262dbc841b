"""Promises of the outbound ADT mapping (mappings/out/hl7v2/adt.yaml): canonical → ADT v2.5.1.

The expected ER7 below is written by hand, field by field, from the meaning of a canonical
Bundle written by hand here and the HL7 v2.5.1 field definitions (chapter 2 MSH, chapter 3 EVN,
PID and PV1; data types in chapter 2A), never from what the mapping renders. A round trip
through the inbound mapping is kept as an extra check only (``test_round_trip_extra_...``): a
mapping and its own inverse can agree on a mistake.
"""

from __future__ import annotations

from copy import deepcopy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.errors import NoMappingError
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "hl7v2"
CTX = MapContext("env", "chu-rabat", received_at=datetime(2024, 3, 15, 10, 30, 5, tzinfo=UTC))

HEADER = "urn:uuid:3f0e6a1c-2b7d-4c55-9d1e-00000000a000"
PATIENT = "urn:uuid:3f0e6a1c-2b7d-4c55-9d1e-00000000a001"
ENCOUNTER = "urn:uuid:3f0e6a1c-2b7d-4c55-9d1e-00000000a002"
DOCTOR = "urn:uuid:3f0e6a1c-2b7d-4c55-9d1e-00000000a003"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def adt_bundle(event: str) -> dict[str, Any]:
    """A canonical ADT message written by hand: Fatima EL AMRANI admitted to cardiology.

    Patient: CIN BE123456 (national id, no assigner given: the CIN system says Morocco) and the
    hospital record number IPP0042317 assigned by CHU-RABAT (type PI); legal name EL AMRANI,
    Fatima Zahra; born 12 March 1962; female; home address 12 rue Oued Ziz, 10000 Rabat, MAR;
    home phone +212537000001 and a mobile +212661000002. Encounter: visit V20240315-001, an
    inpatient stay in CARDIO room 204 bed 1 since 15 March 2024 10:30 (+01:00), attending
    doctor MED0042 Karim BENNIS. Synthetic, no real patient.
    """
    return {
        "resourceType": "Bundle",
        "type": "message",
        "timestamp": "2024-03-15T10:30:05+01:00",
        "entry": [
            {
                "fullUrl": HEADER,
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": HEADER.rsplit(":", 1)[1],
                    "eventCoding": {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0003",
                        "code": event,
                    },
                    "source": {"endpoint": "urn:passerelle:adapter:chu-rabat"},
                    "focus": [{"reference": PATIENT}, {"reference": ENCOUNTER}],
                },
            },
            {
                "fullUrl": PATIENT,
                "resource": {
                    "resourceType": "Patient",
                    "id": PATIENT.rsplit(":", 1)[1],
                    "identifier": [
                        {"system": "https://passerelle.ma/fhir/sid/cin", "value": "BE123456"},
                        {
                            "system": "https://passerelle.ma/fhir/sid/ipp/chu-rabat",
                            "value": "IPP0042317",
                            "type": {"coding": [{"system": V2_0203, "code": "PI"}]},
                            "assigner": {"display": "CHU-RABAT"},
                        },
                    ],
                    "name": [
                        {"use": "official", "family": "EL AMRANI", "given": ["Fatima", "Zahra"]}
                    ],
                    "birthDate": "1962-03-12",
                    "gender": "female",
                    "address": [
                        {
                            "use": "home",
                            "line": ["12 rue Oued Ziz"],
                            "city": "Rabat",
                            "postalCode": "10000",
                            "country": "MAR",
                        }
                    ],
                    "telecom": [
                        {"system": "phone", "value": "+212537000001", "use": "home"},
                        {"system": "phone", "value": "+212661000002", "use": "mobile"},
                    ],
                },
            },
            {
                "fullUrl": ENCOUNTER,
                "resource": {
                    "resourceType": "Encounter",
                    "id": ENCOUNTER.rsplit(":", 1)[1],
                    "identifier": [
                        {
                            "system": "https://passerelle.ma/fhir/sid/visit/chu-rabat",
                            "value": "V20240315-001",
                        }
                    ],
                    "status": "in-progress",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "IMP",
                    },
                    "subject": {"reference": PATIENT},
                    # The canonical form of a location: PL-1..3 in words in the display (no
                    # HL7 delimiters in FHIR strings, issue 12).
                    "location": [{"location": {"display": "CARDIO, room 204, bed 1"}}],
                    "participant": [{"individual": {"reference": DOCTOR}}],
                    "period": {"start": "2024-03-15T10:30:00+01:00"},
                },
            },
            {
                "fullUrl": DOCTOR,
                "resource": {
                    "resourceType": "Practitioner",
                    "id": DOCTOR.rsplit(":", 1)[1],
                    "identifier": [
                        {
                            "system": "https://passerelle.ma/fhir/sid/staff/chu-rabat",
                            "value": "MED0042",
                        }
                    ],
                    "name": [{"family": "BENNIS", "given": ["Karim"]}],
                },
            },
        ],
    }


def render(mappings: MappingSet, bundle: dict[str, Any], version: str = "2.5.1") -> list[str]:
    """The ER7 segments the outbound mapping writes for ``bundle``."""
    text = mappings.render_hl7v2(
        bundle,
        version=version,
        control_id="ADT00001",
        receiving_application="DPI",
        receiving_facility="CHUIS",
    )
    assert "\n" not in text
    assert text.endswith("\r"), "segments end with <CR> (v2.5.1 §2.5.4)"
    return text.rstrip("\r").split("\r")


# MSH (v2.5.1 §2.14.9): MSH-1 "|" and MSH-2 "^~\&" the encoding characters; MSH-3 sending
# application PASSERELLE, MSH-4 sending facility empty; MSH-5/6 receiving application DPI and
# facility CHUIS; MSH-7 date/time of message, the Bundle's timestamp as DTM with its offset;
# MSH-9 message type MSG: code ADT, trigger, structure (table 0354: A01, A04 and A08 use
# ADT_A01; A02 ADT_A02; A03 ADT_A03); MSH-10 control id; MSH-11 processing id P (production,
# table 0103); MSH-12 version 2.5.1; MSH-13 to 17 empty; MSH-18 UNICODE UTF-8 (table 0211, v2.5
# on): the text is sent in UTF-8 (the default subscriber charset), not ASCII, the empty default.
MSH = (
    "MSH|^~\\&|PASSERELLE||DPI|CHUIS|20240315103005+0100||ADT^{event}^{structure}|ADT00001|P|2.5.1"
    "||||||UNICODE UTF-8"
)
# EVN (§3.4.1): EVN-1 event type code (table 0003, kept for backward compatibility), EVN-2
# recorded date/time (the message's time).
EVN = "EVN|{event}|20240315103005+0100"
# PID (§3.4.2): PID-1 set id 1; PID-3 patient identifier list, CX (§2A.14): CX-1 id, CX-4
# assigning authority, CX-5 identifier type (table 0203: NNMAR national number of Morocco, PI
# patient internal identifier), the CIN first; PID-5 patient name, XPN (§2A.88): XPN-1 family,
# XPN-2 given, XPN-3 second given names, XPN-7 name type L legal (table 0200, FHIR use
# official); PID-7 date of birth 19620312; PID-8 administrative sex F (table 0001); PID-11
# address, XAD (§2A.87): XAD-1 street, XAD-3 city, XAD-5 postal code, XAD-6 country, XAD-7
# address type H home (table 0190); PID-13 phone number - home, XTN (§2A.89): XTN-1 number,
# XTN-2 use PRN primary residence number (table 0201), XTN-3 equipment PH telephone or CP
# cellular phone (table 0202).
PID = (
    "PID|1||BE123456^^^MA^NNMAR~IPP0042317^^^CHU-RABAT^PI||EL AMRANI^Fatima^Zahra^^^^L||19620312|F"
    "|||12 rue Oued Ziz^^Rabat^^10000^MAR^H||+212537000001^PRN^PH~+212661000002^PRN^CP"
)


def expected_pv1(
    *,
    pv1_2: str = "I",
    pv1_3: str = "CARDIO^204^1",
    pv1_6: str = "",
    pv1_36: str = "",
    pv1_45: str = "",
) -> str:
    """PV1 (§3.4.3) written field by field.

    PV1-1 set id 1; PV1-2 patient class (table 0004: I inpatient, O outpatient); PV1-3 assigned
    patient location, PL (§2A.53): PL-1 point of care, PL-2 room, PL-3 bed; PV1-6 prior patient
    location (A02); PV1-7 attending doctor, XCN (§2A.90): XCN-1 id, XCN-2 family name, XCN-3
    given name; PV1-19 visit number, CX-1; PV1-36 discharge disposition (table 0112: 01
    discharged to home); PV1-44 admit date/time; PV1-45 discharge date/time.
    """
    fields = [""] * 46
    fields[0] = "PV1"
    fields[1], fields[2], fields[3], fields[6] = "1", pv1_2, pv1_3, pv1_6
    fields[7] = "MED0042^BENNIS^Karim"
    fields[19] = "V20240315-001"
    fields[36] = pv1_36
    fields[44] = "20240315103000+0100"
    fields[45] = pv1_45
    return "|".join(fields).rstrip("|")


def test_a01_admission_is_written_field_by_field(mappings: MappingSet) -> None:
    """A01: MSH, EVN, PID and PV1 carry the hand-written values of each v2.5.1 field."""
    assert render(mappings, adt_bundle("A01")) == [
        MSH.format(event="A01", structure="ADT_A01"),
        EVN.format(event="A01"),
        PID,
        expected_pv1(),
    ]


def test_a04_registration_is_an_outpatient_with_the_adt_a01_structure(mappings: MappingSet) -> None:
    """A04: MSH-9 ADT^A04^ADT_A01 (table 0354) and an ambulatory class is PV1-2 O."""
    bundle = adt_bundle("A04")
    bundle["entry"][2]["resource"]["class"]["code"] = "AMB"
    assert render(mappings, bundle) == [
        MSH.format(event="A04", structure="ADT_A01"),
        EVN.format(event="A04"),
        PID,
        expected_pv1(pv1_2="O"),
    ]


def test_a08_update_uses_the_adt_a01_structure(mappings: MappingSet) -> None:
    """A08: MSH-9 ADT^A08^ADT_A01 (table 0354); the segments are those of A01."""
    lines = render(mappings, adt_bundle("A08"))
    assert lines[0] == MSH.format(event="A08", structure="ADT_A01")
    assert lines[1:] == [EVN.format(event="A08"), PID, expected_pv1()]


def test_a02_transfer_writes_the_new_and_the_prior_location(mappings: MappingSet) -> None:
    """A02: PV1-3 is where the patient now is, PV1-6 the location left (status completed)."""
    bundle = adt_bundle("A02")
    bundle["entry"][2]["resource"]["location"] = [
        {"location": {"display": "CARDIO, room 204, bed 1"}, "status": "completed"},
        {"location": {"display": "USIC, room 3, bed 2"}, "status": "active"},
    ]
    assert render(mappings, bundle) == [
        MSH.format(event="A02", structure="ADT_A02"),
        EVN.format(event="A02"),
        PID,
        expected_pv1(pv1_3="USIC^3^2", pv1_6="CARDIO^204^1"),
    ]


def test_a03_discharge_writes_disposition_and_discharge_time(mappings: MappingSet) -> None:
    """A03: discharged home (table 0112 01) on 20 March 2024 at 11:00 +01:00 (PV1-36, PV1-45)."""
    bundle = adt_bundle("A03")
    encounter = bundle["entry"][2]["resource"]
    encounter["status"] = "finished"
    encounter["period"]["end"] = "2024-03-20T11:00:00+01:00"
    encounter["hospitalization"] = {
        "dischargeDisposition": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
                    "code": "home",
                }
            ]
        }
    }
    assert render(mappings, bundle) == [
        MSH.format(event="A03", structure="ADT_A03"),
        EVN.format(event="A03"),
        PID,
        expected_pv1(pv1_36="01", pv1_45="20240320110000+0100"),
    ]


def test_v23_has_no_structure_in_msh_9_and_one_patient_name(mappings: MappingSet) -> None:
    """v2.3: MSH-9 has two components (v2.3 §2.24.1.9) and PID-5 does not repeat (§3.3.2.5)."""
    bundle = adt_bundle("A01")
    bundle["entry"][1]["resource"]["name"].append({"use": "usual", "family": "AMRANI"})
    lines = render(mappings, bundle, "2.3")
    # MSH-18 UNICODE: v2.3's table 0211 has no "UNICODE UTF-8" (added in v2.5).
    assert lines[0] == (
        "MSH|^~\\&|PASSERELLE||DPI|CHUIS|20240315103005+0100||ADT^A01|ADT00001|P|2.3||||||UNICODE"
    )
    assert lines[2].split("|")[5] == "EL AMRANI^Fatima^Zahra^^^^L"


def test_unknown_event(mappings: MappingSet) -> None:
    """A Bundle whose event has no outbound mapping (A05 pre-admit) is a NoMappingError."""
    with pytest.raises(NoMappingError, match="A05"):
        render(mappings, adt_bundle("A05"))


def test_the_input_bundle_is_not_modified(mappings: MappingSet) -> None:
    """Rendering reads the canonical Bundle and changes nothing in it."""
    bundle = adt_bundle("A01")
    before = deepcopy(bundle)
    render(mappings, bundle)
    assert bundle == before


@pytest.mark.parametrize(
    "name", ["adt_a01_v251.hl7", "adt_a01_v23.hl7", "adt_a04.hl7", "adt_a08.hl7"]
)
def test_round_trip_extra_inbound_then_outbound_keeps_pid_and_visit(
    mappings: MappingSet, name: str
) -> None:
    """Extra (not the oracle): inbound ADT → canonical → ER7 keeps PID-3/5/7/8 and PV1 fields."""
    inbound = parse(decode((SAMPLES / name).read_bytes()))
    bundle = mappings.map_hl7v2(inbound, CTX).bundle
    out = parse(
        mappings.render_hl7v2(
            bundle,
            control_id=inbound.control_id,
            receiving_application="DPI",
            receiving_facility="CHUIS",
        )
    )
    assert out.version == "2.5.1"
    assert out.event == inbound.event
    assert out.control_id == inbound.control_id
    for path in (
        "PID-3(*).1",
        "PID-3(*).4",
        "PID-3(*).5",
        "PID-5(*).1",
        "PID-5(*).2",
        "PID-7",
        "PID-8",
        "PV1-19.1",
        "PV1-2",
        "PV1-7.1",
    ):
        assert out.get_all(path) == inbound.get_all(path), path
