"""Promises of MappingSet.load: every real file loads, and every mistake names file, line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from broker.errors import MappingSpecError
from broker.mapping import MappingSet

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
id: test-adt
source:
  format: hl7v2
  events: [ADT^A01]
  versions: ["2.5.1"]
resources:
  - role: patient
    type: Patient
    rules:
      - target: birthDate
        from: PID-7
        function: date
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "hl7v2").mkdir()
    (tmp_path / "hl7v2" / "m.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def test_every_real_mapping_loads() -> None:
    """Every YAML file under mappings/ loads and compiles, inbound and outbound."""
    mappings = MappingSet.load(ROOT / "mappings")
    for event in ("ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01"):
        for version in ("2.3", "2.3.1", "2.4", "2.5", "2.5.1"):
            assert mappings.supports(event, version)
    assert {r.id for r in mappings.refs} == {
        "hl7v2-adt",
        "hl7v2-adt-person",
        "hl7v2-oru-r01",
        "hl7v2-orm-o01",
        "hl7v2-oml-o21",
        "hl7v2-siu",
        "hl7v2-mdm-t02",
        "hl7v2-vxu-v04",
        "chu-rabat-adt",
    }


def test_good_file_loads(tmp_path: Path) -> None:
    """A minimal valid mapping loads and supports its event."""
    assert MappingSet.load(write(tmp_path, GOOD)).supports("ADT^A01", "2.5.1")


def test_tests_directory_is_skipped(tmp_path: Path) -> None:
    """YAML under mappings/tests/ is golden data, not a mapping."""
    write(tmp_path, GOOD)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "x.yaml").write_text("not: a mapping\n", encoding="utf-8")
    assert MappingSet.load(tmp_path).supports("ADT^A01", "2.5.1")


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "reason"),
    [
        pytest.param(
            "from: PID-7",
            "from: PID7",
            11,
            "resources[0].rules[0].from",
            "not an HL7 v2 path",
            id="bad-path",
        ),
        pytest.param(
            "function: date",
            "function: dat",
            12,
            "resources[0].rules[0].function",
            "unknown function",
            id="unknown-function",
        ),
        pytest.param(
            "type: Patient",
            "type: Patinet",
            8,
            "resources[0].type",
            "not a FHIR R4 resource type",
            id="unknown-resource",
        ),
        pytest.param(
            "target: birthDate",
            "target: birthdate",
            10,
            "resources[0].rules[0].target",
            "no element 'birthdate'",
            id="unknown-element",
        ),
        pytest.param(
            "        function: date\n",
            "        function: date\n        colour: red\n",
            13,
            "resources[0].rules[0].colour",
            "unknown key",
            id="unknown-key",
        ),
        pytest.param(
            "target: birthDate",
            "target: name",
            10,
            "resources[0].rules[0].target",
            "write name[]",
            id="list-without-append",
        ),
        pytest.param("format: hl7v2", "format: x12", 3, "source.format", "hl7v2", id="bad-format"),
        pytest.param(
            "    rules:\n",
            "    require:\n      - check: {path: PID-99, present: true}\n        reason: x\n"
            "    rules:\n",
            10,
            "resources[0].require[0].check.path",
            "PID has",
            id="require-unknown-field",
        ),
        pytest.param(
            "    rules:\n",
            "    require:\n      - check: {path: PID-3, present: true}\n    rules:\n",
            10,
            "resources[0].require[0].reason",
            "Field required",
            id="require-without-reason",
        ),
    ],
)
def test_errors_name_file_line_and_key(
    tmp_path: Path, old: str, new: str, line: int, key: str, reason: str
) -> None:
    """A broken mapping is a MappingSpecError naming the file, the line and the key path."""
    directory = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(MappingSpecError) as caught:
        MappingSet.load(directory)
    err = caught.value
    assert err.file.endswith("m.yaml")
    assert (err.line, err.key) == (line, key)
    assert reason in err.reason


def test_yaml_syntax_error(tmp_path: Path) -> None:
    """A YAML syntax error names the file and line."""
    with pytest.raises(MappingSpecError) as caught:
        MappingSet.load(write(tmp_path, GOOD + "  - [unclosed\n"))
    assert caught.value.line is not None


def test_two_mappings_for_one_event(tmp_path: Path) -> None:
    """Two inbound mappings for the same event and version are refused at load."""
    write(tmp_path, GOOD)
    (tmp_path / "hl7v2" / "n.yaml").write_text(GOOD.replace("test-adt", "other"), encoding="utf-8")
    with pytest.raises(MappingSpecError, match="already mapped"):
        MappingSet.load(tmp_path)


def test_public_surface() -> None:
    """broker.mapping and broker.canonical export exactly their documented names."""
    import broker.canonical
    import broker.mapping

    assert sorted(broker.mapping.__all__) == [
        "DROPPED",
        "FHIR_JSON",
        "HL7V2",
        "MapContext",
        "MapResult",
        "MappingSet",
        "SourceOptions",
        "SourceSettings",
        "TraceStep",
        "map_message",
        "read_message",
        "tally_key",
    ]
    assert broker.canonical.__all__ == ["check", "validate_bundle"]
    for name in broker.mapping.__all__:
        assert getattr(broker.mapping, name).__doc__


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        pytest.param("PID-99", "PID has 39 fields", id="field-beyond-segment"),
        pytest.param("QQQ-1", "not a segment of HL7", id="unknown-segment"),
    ],
)
def test_source_paths_exist_in_declared_versions(tmp_path: Path, path: str, reason: str) -> None:
    """A source path beyond hl7apy's reference structure for the declared versions is refused."""
    with pytest.raises(MappingSpecError) as caught:
        MappingSet.load(write(tmp_path, GOOD.replace("from: PID-7", f"from: {path}")))
    assert caught.value.key == "resources[0].rules[0].from"
    assert reason in caught.value.reason


def test_z_segments_need_no_reference(tmp_path: Path) -> None:
    """Site Z-segments are accepted without a reference structure."""
    text = GOOD.replace("from: PID-7", "from: ZPI-3").replace("function: date", "function: date")
    assert MappingSet.load(write(tmp_path, text)).supports("ADT^A01", "2.5.1")
