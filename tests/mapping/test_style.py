"""The style check (broker.mapping.style) on hand-written Bundles, one rule broken at a time,
and the issue 12 "Done when": every sample the project ships maps to FHIR with no finding."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from broker.errors import MessageError
from broker.mapping import MappingSet
from broker.mapping.golden import CONTEXT, case_adapter
from broker.mapping.style import StyleFinding, check_style, hl7_syntax, style_of_file
from broker.parsing.hl7v2 import decode, parse

ROOT = Path(__file__).resolve().parents[2]

CLEAN: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "message",
    "identifier": {"system": "urn:passerelle:adapter:his", "value": "MSG1"},
    "entry": [
        {
            "fullUrl": "urn:uuid:0b8f1c9e-1d7e-4d0a-9a43-0c3c4f3c1a01",
            "resource": {
                "resourceType": "MessageHeader",
                "eventCoding": {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0003",
                    "code": "A01",
                },
                "source": {"endpoint": "urn:passerelle:adapter:his|x^y"},
            },
        },
        {
            "fullUrl": "urn:uuid:0b8f1c9e-1d7e-4d0a-9a43-0c3c4f3c1a02",
            "request": {
                "method": "PUT",
                "url": "Patient?identifier=https://passerelle.ma/fhir/sid/cin|BE123456",
                "ifNoneExist": "identifier=https://passerelle.ma/fhir/sid/cin|BE123456",
            },
            "resource": {
                "resourceType": "Patient",
                "text": {"status": "generated", "div": "<div>EL AMRANI^Fatima|x~y</div>"},
                "identifier": [
                    {
                        "system": "https://passerelle.ma/fhir/sid/cin",
                        "value": "BE123456",
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                    "code": "NNMAR",
                                }
                            ]
                        },
                    }
                ],
                "name": [{"family": "EL AMRANI", "given": ["Fatima"], "text": "A&E ~ 5 | ok"}],
            },
        },
        {
            "fullUrl": "urn:uuid:0b8f1c9e-1d7e-4d0a-9a43-0c3c4f3c1a03",
            "resource": {
                "resourceType": "Encounter",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "IMP",
                },
                "location": [{"location": {"display": "CARDIO 204 1"}}],
                "participant": [
                    {
                        "individual": {
                            "identifier": {
                                "system": "urn:passerelle:adapter:his:id:local",
                                "value": "D1",
                            }
                        }
                    }
                ],
            },
        },
        {
            "fullUrl": "urn:uuid:0b8f1c9e-1d7e-4d0a-9a43-0c3c4f3c1a04",
            "resource": {
                "resourceType": "Observation",
                "code": {"coding": [{"system": "http://loinc.org", "code": "26464-8"}]},
                "valueQuantity": {"value": 4.1, "unit": "10^9/L"},
                "referenceRange": [{"low": {"value": 4}, "high": {"value": 10}, "text": "4-10"}],
            },
        },
        {
            "fullUrl": "urn:uuid:0b8f1c9e-1d7e-4d0a-9a43-0c3c4f3c1a05",
            "resource": {
                "resourceType": "DocumentReference",
                "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3"},
                "content": [
                    {
                        "attachment": {"contentType": "text/plain", "data": "Xl5efHx+fg=="},
                        "format": {"system": "urn:ietf:bcp:13", "code": "text/plain"},
                    }
                ],
            },
        },
    ],
}
"""A Bundle that breaks no rule, with every exemption in use: conditional URLs and an endpoint
with ``|`` and ``^``, a narrative div, base64 data, ``10^9/L``, prose ``A&E ~ 5 | ok``."""


def _entry(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    found = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    ]
    return found[0]


def _broken(change: Any) -> list[StyleFinding]:
    bundle = copy.deepcopy(CLEAN)
    change(bundle)
    return check_style(bundle)


def test_the_clean_bundle_has_no_finding() -> None:
    """URLs, conditional references, the div, base64 data, 10^n units and prose are exempt."""
    assert check_style(CLEAN) == []


def test_carets_in_a_location_display_are_hl7_syntax_with_its_fhir_path() -> None:
    """A display built by joining PL components with ^ is reported at its full FHIR path."""

    def change(b: dict[str, Any]) -> None:
        _entry(b, "Encounter")["location"][0]["location"]["display"] = "CARDIO^204^1"

    assert [(f.path, f.rule) for f in _broken(change)] == [
        ("Bundle.entry[2].resource.location[0].location.display", "hl7-syntax")
    ]


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("35-150^35^150", "component separator ^"),
        ("^182", "component separator ^"),
        ("60~120", "repetition separator ~"),
        ("CARDIO|204", "field separator |"),
        ("urn:x|a^b", "component separator ^"),
        ("http://x|a|b", "field separator |"),
        ("HUH AE OMU&9.8&ISO", "subcomponent separators &"),
        (r"NHS Provider (inc.A\T\E)", r"escape \T\ "),
        (r"line one\.br\line two", r"escape \.br\ "),
        (r"\H\bold\N\ ", r"escape \H\ "),
        (r"caf\XC3A9\ ", r"escape \XC3A9\ "),
        (r"a \F\ b \S\ c \R\ d \E\ ", r"escape \F\ "),
        (r"x\.sp 2\y", r"escape \.sp 2\ "),
    ],
)
def test_each_hl7_delimiter_and_escape_in_a_string_is_reported(text: str, what: str) -> None:
    """Component, repetition, field and subcomponent separators and every escape are found."""
    assert hl7_syntax(text) == what.strip()

    def change(b: dict[str, Any]) -> None:
        _entry(b, "Observation")["referenceRange"][0]["text"] = text

    found = _broken(change)
    assert [(f.path, f.rule) for f in found] == [
        ("Bundle.entry[3].resource.referenceRange[0].text", "hl7-syntax")
    ]


@pytest.mark.parametrize(
    "text",
    [
        "A&E",
        "~ 5 mg",
        "Cardiology | Rabat",
        "10^9/L",
        "2.5 x 10^-3",
        "Back\\slash",
        "",
        "https://his.chu-rabat.ma/fhir/bundle|TX-2024-000911",
    ],
)
def test_prose_is_not_hl7_syntax(text: str) -> None:
    """A single &, ~ and | between blanks, 10^n, a lone backslash, a FHIR token uri|value."""
    assert hl7_syntax(text) is None


def test_a_coding_without_system_is_reported_in_a_codeableconcept() -> None:
    """CodeableConcept.coding items need a system (local codes get a local system URI)."""

    def change(b: dict[str, Any]) -> None:
        del _entry(b, "Observation")["code"]["coding"][0]["system"]

    assert [str(f) for f in _broken(change)] == [
        "Bundle.entry[3].resource.code.coding[0]: coding-without-system: code '26464-8'"
    ]


@pytest.mark.parametrize(
    ("resource_type", "element"),
    [("Encounter", "class"), ("MessageHeader", "eventCoding")],
)
def test_a_coding_element_without_system_is_reported(resource_type: str, element: str) -> None:
    """Elements of type Coding held directly by a resource need a system too."""

    def change(b: dict[str, Any]) -> None:
        del _entry(b, resource_type)[element]["system"]

    found = _broken(change)
    assert [f.rule for f in found] == ["coding-without-system"]
    assert found[0].path.endswith(f".resource.{element}")


def test_a_document_format_coding_without_system_is_reported() -> None:
    """DocumentReference.content.format is a Coding: without system it is a finding."""

    def change(b: dict[str, Any]) -> None:
        del _entry(b, "DocumentReference")["content"][0]["format"]["system"]

    assert [f.path for f in _broken(change)] == ["Bundle.entry[4].resource.content[0].format"]


def test_an_identifier_without_system_is_reported_on_resources_and_references() -> None:
    """Resource identifiers, Reference.identifier and masterIdentifier need a system."""

    def change(b: dict[str, Any]) -> None:
        del _entry(b, "Patient")["identifier"][0]["system"]
        del _entry(b, "Encounter")["participant"][0]["individual"]["identifier"]["system"]
        del _entry(b, "DocumentReference")["masterIdentifier"]["system"]
        del b["identifier"]["system"]

    assert [str(f) for f in _broken(change)] == [
        "Bundle.identifier: identifier-without-system: value 'MSG1'",
        "Bundle.entry[1].resource.identifier[0]: identifier-without-system: value 'BE123456'",
        "Bundle.entry[2].resource.participant[0].individual.identifier: "
        "identifier-without-system: value 'D1'",
        "Bundle.entry[4].resource.masterIdentifier: identifier-without-system: "
        "value 'urn:oid:1.2.3'",
    ]


def test_hl7_syntax_in_a_code_is_reported() -> None:
    """A code is a string like any other: OBX-3 copied whole (``GLU^Glucose``) is a finding."""

    def change(b: dict[str, Any]) -> None:
        _entry(b, "Observation")["code"]["coding"][0]["code"] = "GLU^Glucose^L"

    assert [f.path for f in _broken(change)] == ["Bundle.entry[3].resource.code.coding[0].code"]


# The "Done when" of issue 12: the samples the project ships, its own and third-party ones.

OWN_HL7 = sorted((ROOT / "tests" / "samples" / "hl7v2").glob("*.hl7"))
THIRD_PARTY = sorted((ROOT / "tests" / "samples" / "thirdparty" / "hl7v2").glob("*.hl7"))
GOLDEN_INPUTS = sorted(
    p
    for p in (ROOT / "mappings" / "tests").rglob("*")
    if p.suffix in (".hl7", ".json") and not p.name.endswith(".expected.json")
)


def style_findings(mappings: MappingSet, sample: Path) -> list[str]:
    """The style findings of what ``sample`` maps to; [] if the product refuses it."""
    in_golden = sample.is_relative_to(ROOT / "mappings" / "tests")
    adapter = case_adapter(sample) if in_golden else "golden"  # site cases: the site's mapping
    try:
        findings = style_of_file(mappings, sample, adapter)
    except MessageError:
        return []  # refused: nothing is written, nothing to judge (the golden cases pin it)
    return [f"{sample.relative_to(ROOT)}: {f}" for f in findings]


def test_every_sample_maps_to_clean_fhir(mappings: MappingSet) -> None:
    """Own samples, golden inputs (HL7 v2 and FHIR) and third-party samples: zero findings."""
    samples = [*OWN_HL7, *GOLDEN_INPUTS, *THIRD_PARTY]
    assert len(THIRD_PARTY) >= 8
    assert len(OWN_HL7) >= 20
    assert len(GOLDEN_INPUTS) >= 40
    findings = [line for sample in samples for line in style_findings(mappings, sample)]
    assert not findings, f"{len(findings)} style finding(s):\n" + "\n".join(findings)


def test_every_third_party_sample_maps(mappings: MappingSet) -> None:
    """Each shipped third-party sample is one the product maps (refused ones are not kept)."""
    for sample in THIRD_PARTY:
        mappings.map_hl7v2(parse(decode(sample.read_bytes())), CONTEXT)
