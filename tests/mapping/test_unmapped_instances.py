"""Promises of the unmapped-input report per segment instance, and of what fills its gaps.

Synthetic messages only (Moroccan test patients, no real data).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.errors import CanonicalError, MessageError
from broker.mapping import MapContext, MappingSet, map_message
from broker.mapping.hl7v2_in.engine import ENGINE_READS, CompiledResource
from broker.mapping.hl7v2_in.scopes import (
    Scope,
    compile_source,
    field_count,
    field_numbers,
    group_scopes,
)
from broker.mapping.hl7v2_in.unmapped import _is_set_id
from broker.mapping.message import read_message
from broker.mapping.spec import HL7_VERSIONS, ResourceSpec, RuleSpec
from broker.mapping.targets import fhir_model, requirements
from broker.mapping.transforms import INBOUND, Env, SourceValue, field_read
from broker.mapping.where import Where
from broker.parsing.hl7v2 import Message, parse, parse_path

ROOT = Path(__file__).resolve().parents[2]

MSH = "MSH|^~\\&|LIS|LABCHUIS|PASSERELLE|MS|20240316091000||ORU^R01^ORU_R01|{id}|P|2.5.1"
PID = "PID|1||BE123456^^^MA^NNMAR~IPP0042317^^^CHUIS^PI||EL AMRANI^Fatima^^^^^L||19620312|F"
OBR = "OBR|1|ORD-7782|LAB-2024-55121|2345-7^Glucose^LN|||20240316080000" + "|" * 18 + "F"


def oru(*segments: str, control_id: str = "UNM1") -> str:
    return "\r".join([MSH.format(id=control_id), PID, *segments]) + "\r"


def resources(result: Any, kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == kind]


class TestPerInstance:
    """A field is reported where no rule read it, whatever rules read elsewhere."""

    def test_nte_after_pid_is_reported_though_other_ntes_are_read(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """NTE-3 read under each OBX does not hide the NTE after PID (v2-to-FHIR: no target)."""
        text = oru(
            "NTE|1||Patiente diabétique connue",
            OBR,
            "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L^mmol/L^UCUM|3.9-6.1|N|||F",
            "NTE|1||Contrôle à J7",
        )
        message = parse(text)
        result = mappings.map_hl7v2(message, ctx)
        unmapped = mappings.unmapped(message, ctx.source, result)
        assert "PATIENT_RESULT/NTE-3" in unmapped
        assert "OBSERVATION/NTE-3" not in unmapped
        assert "NTE-3" not in unmapped

    def test_without_the_result_the_message_is_mapped_again(self, mappings: MappingSet) -> None:
        """unmapped(message) alone gives the same report as with the mapping result."""
        message = parse(oru("NTE|1||note", OBR, "OBX|1|ST|X^Y^L||texte||||||F"))
        assert "PATIENT_RESULT/NTE-3" in mappings.unmapped(message)

    def test_same_place_same_location_in_every_message(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """Locations name structure, not indexes: the Redis tally per adapter stays bounded."""
        obx = "OBX|{n}|NM|2345-7^Glucose^LN||5.4|mmol/L|||||F|||||||||||||||||ZZ"
        one = parse(oru(OBR, obx.format(n=1)))
        many = parse(oru(OBR, *(obx.format(n=n) for n in range(1, 6)), control_id="UNM2"))
        first = mappings.unmapped(one, ctx.source, mappings.map_hl7v2(one, ctx))
        second = mappings.unmapped(many, ctx.source, mappings.map_hl7v2(many, ctx))
        assert first == second
        assert not any("(" in location or "[" in location for location in second)

    def test_a_rule_whose_condition_fails_reads_nothing(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """OBX-6 units on a coded (CWE) result are read by no rule: reported."""
        message = parse(oru(OBR, "OBX|1|CWE|X^Y^L||POS^Positif^L|mg||||||F"))
        unmapped = mappings.unmapped(message, ctx.source, mappings.map_hl7v2(message, ctx))
        assert "OBX-6" in unmapped

    def test_coalesce_alternatives_count_as_read(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """ORC-2 wins over OBR-2 for the placer number; OBR-2 was mapped, not forgotten."""
        message = parse(oru("ORC|RE|ORD-7782^CHUIS|LAB-2024-55121^LABCHUIS", OBR))
        unmapped = mappings.unmapped(message, ctx.source, mappings.map_hl7v2(message, ctx))
        assert not {"OBR-2", "OBR-3", "ORC-2", "ORC-3"} & set(unmapped)

    def test_repetitions_after_the_one_read_are_reported(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """An SN OBX-5 is read once; a second repetition is named OBX-5(2+), never dropped."""
        message = parse(oru(OBR, "OBX|1|SN|X^Y^L||>^5~<^9|mg||||||F"))
        unmapped = mappings.unmapped(message, ctx.source, mappings.map_hl7v2(message, ctx))
        assert "OBX-5(2+)" in unmapped
        assert "OBX-5" not in unmapped

    def test_a_function_reading_every_repetition_reads_the_field(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """text_lines keeps every TX repetition: nothing is reported."""
        message = parse(oru(OBR, "OBX|1|TX|X^Y^L||ligne 1~ligne 2||||||F"))
        unmapped = mappings.unmapped(message, ctx.source, mappings.map_hl7v2(message, ctx))
        assert not [u for u in unmapped if u.startswith("OBX-5")]

    def test_set_ids_and_engine_fields_are_never_reported(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """PID-1, OBR-1, OBX-1 number segments; MSH-10 is read by the engine."""
        message = parse(oru(OBR, "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|||||F"))
        unmapped = set(mappings.unmapped(message, ctx.source, mappings.map_hl7v2(message, ctx)))
        assert not {"PID-1", "OBR-1", "OBX-1", "MSH-10", "MSH-9"} & unmapped


class TestObservationRepetitions:
    """A repeating OBX-5 (several answers) is mapped, never cut to its first repetition."""

    @pytest.mark.parametrize("value_type", ["CWE", "CE"])
    def test_coded_repetitions_become_components(
        self, mappings: MappingSet, ctx: MapContext, value_type: str
    ) -> None:
        """Each repetition is a component with OBX-3's code; value[x] stays empty (obs-7)."""
        obx = f"OBX|1|{value_type}|6463-4^Bactéries^LN||ECOLI^E. coli^L~KLEBS^Klebsiella^L||||||F"
        result = mappings.map_hl7v2(parse(oru(OBR, obx)), ctx)
        (observation,) = resources(result, "Observation")
        assert "valueCodeableConcept" not in observation
        codes = [c["valueCodeableConcept"]["coding"][0]["code"] for c in observation["component"]]
        assert codes == ["ECOLI", "KLEBS"]
        assert all(c["code"]["coding"][0]["code"] == "6463-4" for c in observation["component"])

    def test_numeric_repetitions_become_components_with_units(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """NM repetitions each become a component valueQuantity with the OBX-6 unit."""
        obx = "OBX|1|NM|8480-6^PAS^LN||120~135|mm[Hg]^mm[Hg]^UCUM||||||F"
        result = mappings.map_hl7v2(parse(oru(OBR, obx)), ctx)
        (observation,) = resources(result, "Observation")
        values = [c["valueQuantity"]["value"] for c in observation["component"]]
        assert values == [120, 135]
        assert "valueQuantity" not in observation

    def test_a_single_coded_value_stays_the_value(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """One repetition keeps the IG's OBX-5 → valueCodeableConcept, no component."""
        obx = "OBX|1|CWE|6463-4^Bactéries^LN||ECOLI^E. coli^L||||||F"
        result = mappings.map_hl7v2(parse(oru(OBR, obx)), ctx)
        (observation,) = resources(result, "Observation")
        assert observation["valueCodeableConcept"]["coding"][0]["code"] == "ECOLI"
        assert "component" not in observation


class TestRequiredElements:
    """The per-message check covers complex 1..x elements, not only primitives."""

    def test_requirements_include_complex_elements(self) -> None:
        """DocumentReference.content and Observation.code are required like status."""
        for kind, name in [("DocumentReference", "content"), ("Observation", "code")]:
            model = fhir_model(kind)
            assert model is not None
            assert name in requirements(model)[0]

    def test_missing_content_is_a_canonical_error_naming_the_element(self) -> None:
        """A DocumentReference without content never leaves the engine as invalid FHIR."""
        model = fhir_model("DocumentReference")
        assert model is not None
        required, choices = requirements(model)
        rule = RuleSpec(target="status", value="current")
        spec = ResourceSpec(role="doc", type="DocumentReference", rules=[rule])
        resource = CompiledResource(spec, None, [], required, choices)
        with pytest.raises(CanonicalError, match=r"DocumentReference\.content .* required"):
            resource.check({"resourceType": "DocumentReference", "status": "current"}, "e[1]")


class TestWithdrawnFields:
    """Field numbers come from hl7apy's element names: withdrawn fields shift nothing."""

    def test_field_count_reaches_pid_40_in_v28(self) -> None:
        """hl7apy lists 39 PID fields in 2.8 (withdrawn ones left out) but the last is PID-40."""
        assert field_count("PID", "2.8") == 40
        assert field_count("PV1", "2.7") == 54
        numbers = field_numbers("PV1", "2.7")
        assert numbers is not None
        assert 52 not in numbers

    def test_a_v28_only_mapping_may_read_pid_40(self) -> None:
        """compile_source accepts PID-40 when only 2.8 is declared."""
        where = Where("m.yaml", {}, ("2.8",), None, reads=set())  # type: ignore[arg-type]
        assert compile_source("PID-40", where, ("rules", 0)).path.field == 40

    def test_set_id_types_are_read_by_number(self) -> None:
        """OBX-1 is SI in 2.8 and PID-40 (XTN) is not, though fields before it were withdrawn."""
        assert _is_set_id("OBX", 1, "2.8")
        assert not _is_set_id("PID", 40, "2.8")
        assert not _is_set_id("PV1", 53, "2.7")


class TestTelecom:
    """xtn_telecom reads the number where v2.7+ senders put it."""

    @staticmethod
    def telecom(xtn: str) -> Any:
        message = parse(MSH.format(id="T1") + "\rPID|1||X||N^N||19800101|F|||||" + xtn + "\r")
        segment = message.segments[1]
        value = SourceValue(xtn, segment, parse_path("PID-13"), 1)
        return INBOUND["xtn_telecom"].fn([value], Env(message, "Africa/Casablanca", "t"), None)

    def test_xtn_12_when_xtn_1_is_empty(self) -> None:
        """XTN-1 is withdrawn in v2.7: XTN-12 unformatted number is the value."""
        point = self.telecom("^PRN^PH^^^^^^^^^+212522123456")
        assert point == {"system": "phone", "value": "+212522123456", "use": "home"}

    def test_built_from_country_area_and_local(self) -> None:
        """Without XTN-1 and XTN-12 the number is XTN-5 + XTN-6 + XTN-7."""
        point = self.telecom("^PRN^CP^^212^661^234567")
        assert point == {"system": "phone", "value": "+212661234567", "use": "mobile"}

    def test_xtn_1_is_still_preferred(self) -> None:
        """A v2.5 sender's XTN-1 stays the value."""
        assert self.telecom("0522123456^WPN^PH")["value"] == "0522123456"

    def test_no_local_number_no_contact_point(self) -> None:
        """A country or area code alone is not a phone number."""
        assert self.telecom("^PRN^PH^^212^522") is None


def _reference_report(mappings: MappingSet, message: Message, adapter: str, read: Any) -> list[str]:
    """The unmapped report as its docstring defines it, field by field (no shortcuts)."""
    mapping = mappings._mapping_for(message, adapter)
    places: dict[int, str] = {}
    if mapping.groups:
        root = Scope(None, message.segments, None)
        scopes = group_scopes(mapping.groups, mapping.group_order, root)
        for name in mapping.group_order:
            for scope in scopes[name]:
                for segment in scope.segments:
                    if segment.name in mapping.groups[name].start_names:
                        places.pop(id(segment), None)
                    else:
                        places[id(segment)] = name
    version = message.version if message.version in HL7_VERSIONS else "2.5.1"
    report: list[str] = []
    for segment in message.segments:
        place = places.get(id(segment))
        prefix = f"{place}/{segment.name}" if place else segment.name
        types = field_numbers(segment.name, version) or {}
        for number in range(1, len(segment.fields)):
            if not segment.field(number) or field_read(segment, number) in read:
                continue
            if (segment.name, number) in ENGINE_READS:
                continue
            if not segment.name.startswith("Z") and types.get(number) == "SI":
                continue
            location = f"{prefix}-{number}"
            if field_read(segment, number, one_repetition=True) in read:
                others = segment.repetitions(number)[1:]
                if not any(rep and rep != '""' for rep in others):
                    continue
                location += "(2+)"
            if location not in report:
                report.append(location)
    return report


REFUSED = (
    "mappings/tests/mdm_t02_v251_no_content.hl7",
    "mappings/tests/orm_o01_no_patient.hl7",
    "tests/samples/hl7v2/adt_a17_unsupported.hl7",
    "tests/samples/hl7v2/broken_encoding_chars.hl7",
    "tests/samples/hl7v2/broken_missing_msh10.hl7",
    "tests/samples/hl7v2/broken_no_msh.hl7",
)
"""The samples the broker refuses (broken, unsupported or unidentified): they have no report."""


def _samples() -> list[Any]:
    paths = sorted(ROOT.glob("mappings/tests/**/*.hl7")) + sorted(
        ROOT.glob("tests/samples/**/*.hl7")
    )
    return [
        pytest.param(path, id=str(path.relative_to(ROOT)))
        for path in paths
        if str(path.relative_to(ROOT)) not in REFUSED
    ]


def _map(mappings: MappingSet, path: Path, adapter: str) -> tuple[Message, Any]:
    message = read_message(path.read_bytes())
    assert isinstance(message, Message)
    now = datetime(2024, 1, 1, tzinfo=UTC)
    return message, map_message(message, mappings, source=adapter, envelope_id="e", received_at=now)


class TestEverySample:
    """The report of every sample and golden case is the field-by-field definition's."""

    @pytest.mark.parametrize("path", _samples())
    @pytest.mark.parametrize("adapter", ["golden", "chu-rabat-adt"])
    def test_report_matches_the_definition(
        self, mappings: MappingSet, path: Path, adapter: str
    ) -> None:
        """Fields no rule read, per instance and group, Set IDs and MSH engine reads left out."""
        message, result = _map(mappings, path, adapter)
        expected = _reference_report(mappings, message, adapter, result.read)
        assert list(result.unmapped) == expected

    @pytest.mark.parametrize("name", REFUSED)
    def test_the_samples_left_out_are_refused(self, mappings: MappingSet, name: str) -> None:
        """Each sample left out of the comparison is one the broker refuses, none by mistake."""
        with pytest.raises(MessageError):
            _map(mappings, ROOT / name, "chu-rabat-adt")
