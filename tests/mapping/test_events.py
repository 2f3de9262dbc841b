"""ADT trigger events beyond A01/A04/A08: the key elements each one must set (HL7 v2.5.1 ch. 3,
HL7 v2-to-FHIR IG). The golden files under mappings/tests/ pin the whole Bundle; these tests say
which parts of it matter for each event, so a regolded file cannot silently lose them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "hl7v2"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def bundle(mappings: MappingSet, ctx: MapContext, name: str) -> dict[str, Any]:
    message = parse(decode((SAMPLES / f"{name}.hl7").read_bytes()))
    result = mappings.map_hl7v2(message, ctx)
    return result.bundle


def resources(b: dict[str, Any], type_name: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == type_name]


def encounter(b: dict[str, Any]) -> dict[str, Any]:
    (found,) = resources(b, "Encounter")
    return found


def event(b: dict[str, Any]) -> str:
    (header,) = resources(b, "MessageHeader")
    return str(header["eventCoding"]["code"])


@pytest.mark.parametrize("name", ["adt_a02_v251", "adt_a02_v23"])
def test_a02_transfer_moves_the_encounter_to_pv1_3(
    mappings: MappingSet, ctx: MapContext, name: str
) -> None:
    """A02: the stay stays open; PV1-3 (intensive care) is the active location, PV1-6 completed."""
    b = bundle(mappings, ctx, name)
    enc = encounter(b)
    assert event(b) == "A02"
    assert enc["status"] == "in-progress"
    assert [(loc["location"]["display"], loc["status"]) for loc in enc["location"]] == [
        ("USIC, room 12, bed 1", "active"),
        ("CARDIO, room 204, bed 1", "completed"),
    ]
    assert enc["period"] == {"start": "2024-03-15T10:15:00+00:00"}


@pytest.mark.parametrize("name", ["adt_a03_v251", "adt_a03_v23"])
def test_a03_discharge_finishes_the_encounter(
    mappings: MappingSet, ctx: MapContext, name: str
) -> None:
    """A03: status finished, period.end from PV1-45, PV1-36 01 → discharge-disposition home."""
    enc = encounter(bundle(mappings, ctx, name))
    assert enc["status"] == "finished"
    assert enc["period"] == {
        "start": "2024-03-15T10:15:00+00:00",
        "end": "2024-03-20T14:30:00+00:00",
    }
    codings = enc["hospitalization"]["dischargeDisposition"]["coding"]
    assert codings[0] == {
        "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
        "code": "home",
        "display": "Home",
    }
    assert codings[1]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0112"
    assert codings[1]["code"] == "01"


def test_a05_pre_admit_is_planned(mappings: MappingSet, ctx: MapContext) -> None:
    """A05: status planned, class PRENC (PV1-2 P), no period since nobody is admitted yet."""
    enc = encounter(bundle(mappings, ctx, "adt_a05_v251"))
    assert enc["status"] == "planned"
    assert enc["class"]["code"] == "PRENC"
    assert "period" not in enc


def test_a06_outpatient_becomes_inpatient(mappings: MappingSet, ctx: MapContext) -> None:
    """A06: the open stay's class becomes inpatient (IMP) from PV1-2 I."""
    b = bundle(mappings, ctx, "adt_a06_v251")
    enc = encounter(b)
    assert event(b) == "A06"
    assert enc["status"] == "in-progress"
    assert enc["class"] == {"system": ACT, "code": "IMP", "display": "inpatient encounter"}


def test_a07_inpatient_becomes_outpatient(mappings: MappingSet, ctx: MapContext) -> None:
    """A07: the open stay's class becomes ambulatory (AMB) from PV1-2 O, same visit number."""
    b = bundle(mappings, ctx, "adt_a07_v251")
    enc = encounter(b)
    assert event(b) == "A07"
    assert enc["status"] == "in-progress"
    assert enc["class"] == {"system": ACT, "code": "AMB", "display": "ambulatory"}
    assert enc["identifier"][0]["value"] == "V2024-000990"


def test_a11_cancel_admit_is_entered_in_error(mappings: MappingSet, ctx: MapContext) -> None:
    """A11: the admitted encounter (same visit number) is entered-in-error."""
    enc = encounter(bundle(mappings, ctx, "adt_a11_v251"))
    assert enc["status"] == "entered-in-error"
    assert enc["identifier"][0]["value"] == "V2024-000781"


def test_a12_cancel_transfer_reverts_location(mappings: MappingSet, ctx: MapContext) -> None:
    """A12: back in progress at the location before the cancelled transfer (PV1-3)."""
    enc = encounter(bundle(mappings, ctx, "adt_a12_v251"))
    assert enc["status"] == "in-progress"
    assert [loc["location"]["display"] for loc in enc["location"]] == ["CARDIO, room 204, bed 1"]


def test_a13_cancel_discharge_reopens_the_stay(mappings: MappingSet, ctx: MapContext) -> None:
    """A13: in progress again, no period.end and no discharge disposition."""
    enc = encounter(bundle(mappings, ctx, "adt_a13_v251"))
    assert enc["status"] == "in-progress"
    assert enc["period"] == {"start": "2024-03-15T10:15:00+00:00"}
    assert "hospitalization" not in enc


def test_a13_wins_over_a_discharge_time_still_sent(mappings: MappingSet, ctx: MapContext) -> None:
    """An A13 that still carries PV1-45 is not turned into a finished encounter."""
    text = (SAMPLES / "adt_a03_v251.hl7").read_text(encoding="utf-8")
    text = text.replace("ADT^A03^ADT_A03", "ADT^A13^ADT_A01").replace("EVN|A03", "EVN|A13")
    result = mappings.map_hl7v2(parse(text), ctx)
    assert encounter(result.bundle)["status"] == "in-progress"


@pytest.mark.parametrize(("name", "event_code"), [("adt_a28_v251", "A28"), ("adt_a31_v251", "A31")])
def test_a28_a31_person_events_give_a_patient_only(
    mappings: MappingSet, ctx: MapContext, name: str, event_code: str
) -> None:
    """A28/A31: Patient only, no Encounter even though ADT_A05 carries a placeholder PV1."""
    b = bundle(mappings, ctx, name)
    assert event(b) == event_code
    assert [e["resource"]["resourceType"] for e in b["entry"]] == ["MessageHeader", "Patient"]
    (patient,) = resources(b, "Patient")
    assert patient["identifier"][0]["value"] == "AB456789"
    assert "link" not in patient
    if event_code == "A31":
        assert patient["address"][0]["city"] == "Casablanca"
        assert patient["telecom"][1]["value"] == "0698765432"


@pytest.mark.parametrize("name", ["adt_a40_v251", "adt_a40_v23"])
def test_a40_merge_links_the_surviving_patient(
    mappings: MappingSet, ctx: MapContext, name: str
) -> None:
    """A40: the PID Patient replaces the Patient identified by MRG-1; no Encounter."""
    b = bundle(mappings, ctx, name)
    assert resources(b, "Encounter") == []
    (patient,) = resources(b, "Patient")
    assert [i["value"] for i in patient["identifier"]] == ["BE123456", "IPP0042317"]
    (link,) = patient["link"]
    assert link["type"] == "replaces"
    assert link["other"]["identifier"]["value"] == "IPP0039001"
    assert link["other"]["identifier"]["system"] == "https://passerelle.ma/fhir/sid/ipp/chuis"


@pytest.mark.parametrize(("name", "event_code"), [("adt_a02_v251", "A02"), ("adt_a03_v251", "A03")])
def test_a02_a03_render_back_to_hl7v2(
    mappings: MappingSet, ctx: MapContext, name: str, event_code: str
) -> None:
    """Outbound: A02/A03 with their structures; A03 keeps PV1-36 and PV1-45."""
    inbound = parse(decode((SAMPLES / f"{name}.hl7").read_bytes()))
    text = mappings.render_hl7v2(
        mappings.map_hl7v2(inbound, ctx).bundle,
        control_id=inbound.control_id,
        receiving_application="DPI",
        receiving_facility="CHUIS",
    )
    out = parse(text)
    assert out.event == inbound.event
    assert out.get_all("MSH-9.2") == [event_code]
    assert out.get_all("MSH-9.3") == [f"ADT_{event_code}"]
    assert out.get_all("PV1-3.1") == inbound.get_all("PV1-3.1")
    assert out.get_all("PV1-6.1") == inbound.get_all("PV1-6.1")
    assert out.get_all("PV1-36") == inbound.get_all("PV1-36")
    assert out.get_all("PV1-45") == (["20240320143000+0000"] if event_code == "A03" else [])
