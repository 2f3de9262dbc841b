"""Normalisation of FHIR input: identifier systems, code systems, local lab codes, site overrides."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from broker.mapping import MapContext, MappingSet

CIN = "https://passerelle.ma/fhir/sid/cin"
LAB_LOCAL = "https://passerelle.ma/fhir/CodeSystem/lab-local"


def observation(system: str, code: str, subject_system: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"identifier": {"system": subject_system, "value": "BE123456"}},
    }


def mapped(mappings: MappingSet, ctx: MapContext, data: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = mappings.map_fhir(data, ctx).bundle["entry"][1]["resource"]
    return resource


class TestBase:
    def test_a_local_lab_code_gets_its_loinc_coding_first_and_keeps_its_own(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """lab-local GLY → LOINC 14749-6 (glucose, molar) added before the local coding (shared table)."""
        out = mapped(mappings, ctx, observation(LAB_LOCAL, "GLY", CIN))
        assert [(c["system"], c["code"]) for c in out["code"]["coding"]] == [
            ("http://loinc.org", "14749-6"),
            (LAB_LOCAL, "GLY"),
        ]

    def test_the_table_used_is_recorded_with_the_mapping(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """MapResult.mappings names the FHIR file and the shared table with their hashes."""
        done = mappings.map_fhir(observation(LAB_LOCAL, "GLY", CIN), ctx)
        assert [m.id for m in done.mappings] == ["fhir-r4", "table:lab-local-to-loinc"]

    def test_an_unknown_local_code_is_left_as_sent(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """A code the table does not have stays alone; nothing is invented."""
        out = mapped(mappings, ctx, observation(LAB_LOCAL, "ZZZ", CIN))
        assert out["code"]["coding"] == [{"system": LAB_LOCAL, "code": "ZZZ"}]

    def test_a_loinc_oid_becomes_the_loinc_uri(self, mappings: MappingSet, ctx: MapContext) -> None:
        """urn:oid:2.16.840.1.113883.6.1 is LOINC."""
        out = mapped(mappings, ctx, observation("urn:oid:2.16.840.1.113883.6.1", "718-7", CIN))
        assert out["code"]["coding"] == [{"system": "http://loinc.org", "code": "718-7"}]

    def test_identifier_systems_inside_references_are_normalised(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """Reference.identifier is an Identifier too; the partition key uses the national URI."""
        done = mappings.map_fhir(observation(LAB_LOCAL, "GLY", "urn:oid:2.16.504.1.1.1"), ctx)
        out = done.bundle["entry"][1]["resource"]
        assert out["subject"]["identifier"]["system"] == CIN
        assert done.partition_key == f"{CIN}|BE123456"


class TestSite:
    def test_a_site_system_is_normalised_for_its_adapter_only(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """http://chu-rabat.ma/ipp is CHU Rabat's IPP from adapter chu-rabat-fhir, else left."""
        data = observation("http://chu-rabat.ma/labo/codes", "CREA", "http://chu-rabat.ma/ipp")
        site = mapped(mappings, replace(ctx, source="chu-rabat-fhir"), data)
        other = mapped(mappings, ctx, data)
        assert (
            site["subject"]["identifier"]["system"]
            == "https://passerelle.ma/fhir/sid/ipp/chu-rabat"
        )
        # CHU Rabat reports creatinine in mg/L: its own table gives the mass LOINC term.
        assert [c["code"] for c in site["code"]["coding"]] == ["2160-0", "CREA"]
        assert other["subject"]["identifier"]["system"] == "http://chu-rabat.ma/ipp"
        assert other["code"]["coding"] == [
            {"system": "http://chu-rabat.ma/labo/codes", "code": "CREA"}
        ]

    def test_the_site_file_is_recorded_first(self, mappings: MappingSet, ctx: MapContext) -> None:
        """As for HL7 site mappings: the site, then the base it extends."""
        data = observation(LAB_LOCAL, "NA", CIN)
        done = mappings.map_fhir(data, replace(ctx, source="chu-rabat-fhir"))
        assert [m.id for m in done.mappings][:2] == ["chu-rabat-fhir", "fhir-r4"]


class TestFhirReadsAsFhir:
    """Issue 12 on the FHIR path: the CIN typed NI as on the HL7 path, every Coding a system."""

    V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

    def _patient(self, identifier: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "Patient", "id": "p1", "identifier": [identifier]}

    def test_a_cin_typed_nnmar_is_typed_ni(self, mappings: MappingSet, ctx: MapContext) -> None:
        """A v2-0203 NNMAR type (not a v2-0203 code) becomes NI, the type the HL7 path writes."""
        kind = {"coding": [{"system": self.V2_0203, "code": "NNMAR"}]}
        out = mapped(mappings, ctx, self._patient({"system": CIN, "value": "BE1", "type": kind}))
        assert [(c["system"], c["code"]) for c in out["identifier"][0]["type"]["coding"]] == [
            (self.V2_0203, "NI")
        ]

    def test_an_untyped_cin_gets_type_ni(self, mappings: MappingSet, ctx: MapContext) -> None:
        """A Patient's CIN sent without a type is typed NI (v2-0203), as from HL7 v2."""
        out = mapped(mappings, ctx, self._patient({"system": CIN, "value": "BE1"}))
        assert out["identifier"][0]["type"] == {"coding": [{"system": self.V2_0203, "code": "NI"}]}

    def test_a_coding_without_system_gets_the_adapters_local_code_system(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """A Coding sent without a system is put in urn:passerelle:adapter:<adapter>:code:<element>."""
        data = observation(LAB_LOCAL, "GLY", CIN)
        data["code"] = {"coding": [{"code": "GLU-X", "display": "Glucose maison"}]}
        out = mapped(mappings, ctx, data)
        assert out["code"]["coding"] == [
            {
                "system": f"urn:passerelle:adapter:{ctx.source}:code:observation-code",
                "code": "GLU-X",
                "display": "Glucose maison",
            }
        ]
