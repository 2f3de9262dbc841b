"""Promises of the dry-run views of a mapping run: the trace and the unmapped-input report."""

from __future__ import annotations

from pathlib import Path

from broker.mapping import MapContext, MappingSet, TraceStep
from broker.parsing.hl7v2 import decode, parse

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "hl7v2"


def message(name: str):  # type: ignore[no-untyped-def]
    return parse(decode((SAMPLES / f"{name}.hl7").read_bytes()))


def test_trace_names_file_line_source_target_and_value(
    mappings: MappingSet, ctx: MapContext
) -> None:
    """Each element written gives one step: the rule's file and line, source, target and value."""
    steps: list[TraceStep] = []
    mappings.map_hl7v2(message("adt_a01_v251"), ctx, trace=steps)
    gender = next(s for s in steps if s.target == "Patient.gender")
    assert (Path(gender.file).name, gender.source, gender.value) == ("adt.yaml", "PID-8", "female")
    lines = Path(gender.file).read_text(encoding="utf-8").splitlines()
    assert "target: gender" in lines[(gender.line or 0) - 1]
    assert str(gender).endswith(f':{gender.line} PID-8 -> Patient.gender = "female"')
    assert any(s.target == "Encounter.participant[].individual" for s in steps)


def test_trace_numbers_repeated_resources(mappings: MappingSet, ctx: MapContext) -> None:
    """Several instances of one role are told apart as Observation(1), Observation(2), ..."""
    steps: list[TraceStep] = []
    mappings.map_hl7v2(message("oru_r01_two_patients"), ctx, trace=steps)
    targets = {s.target for s in steps}
    assert {"Patient(2).gender", "Observation(3).code", "DiagnosticReport(1).status"} <= targets


def test_trace_does_not_change_the_result(mappings: MappingSet, ctx: MapContext) -> None:
    """The Bundle is the same with and without a trace."""
    parsed = message("oru_r01_20obx")
    assert mappings.map_hl7v2(parsed, ctx, trace=[]) == mappings.map_hl7v2(parsed, ctx)


def test_unmapped_lists_fields_no_rule_read(mappings: MappingSet) -> None:
    """Fields present but never read come out as SEG-n in message order; set ids are left out."""
    unmapped = mappings.unmapped(message("adt_a01_zsegments"))
    assert unmapped[-6:] == ["ZPI-1", "ZPI-2", "ZPI-3", "ZPI-4", "ZVI-1", "ZVI-2"]
    assert "PID-1" not in unmapped
    assert not {"PID-3", "PID-8", "MSH-9", "MSH-10"} & set(unmapped)
