"""Promises of the shared code tables in mappings/tables/ (YAML and CSV)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.canonical import validate_bundle
from broker.errors import MappingSpecError
from broker.mapping import MapContext, MappingSet
from broker.mapping.lint import lint
from broker.parsing.hl7v2 import parse

ROOT = Path(__file__).resolve().parents[2]
CTX = MapContext("env", "chu-rabat", received_at=datetime(2024, 3, 15, 10, 30, 5, tzinfo=UTC))
ORU = (
    "MSH|^~\\&|LIS|LABCHUIS|PASSERELLE|MS|20240316090000||ORU^R01^ORU_R01|LAB9|P|2.5.1\r"
    "PID|1||IPP0042317^^^CHUIS^PI||EL AMRANI^Fatima||19620312|F\r"
    "OBR|1|ORD-1|LAB-1|24323-8^Panel^LN|||20240316080000\r"
    "OBX|1|NM|GLY^Glycemie^L||5.4|mmol/L|3.9-6.1|N|||F\r"
    "OBX|2|NM|CREA^Creatinine^99CHU||132|umol/L|53-115|H|||F\r"
    "OBX|3|NM|XYZ^Inconnu^L||1|mmol/L|||||F\r"
    "OBX|4|NM|2160-0^Creatinine^LN||132|umol/L|53-115|HH|||F\r"
)
ADT = (
    "MSH|^~\\&|HIS|CHUIS|PASSERELLE|MS|20240315103000||ADT^A01^ADT_A01|M1|P|2.5.1\r"
    "PID|1||BE123456^^^MA^NNMAR||EL AMRANI^Fatima||19620312|H\r"
)
GENDER_CSV = "code,target\nH,male\nF,female\n"


def mapping(event: str, map_name: str = "gender-fr", extra: str = "") -> str:
    return extra + textwrap.dedent(
        f"""\
        id: m-{event.replace("^", "-").lower()}
        source: {{format: hl7v2, events: [{event}], versions: ["2.5.1"]}}
        resources:
          - role: patient
            type: Patient
            rules:
              - {{target: gender, from: PID-8, map: {map_name}}}
        """
    )


def root(tmp_path: Path, tables: dict[str, str], mappings: dict[str, str]) -> Path:
    (tmp_path / "tables").mkdir()
    for name, text in tables.items():
        (tmp_path / "tables" / name).write_text(text, encoding="utf-8")
    (tmp_path / "hl7v2").mkdir()
    for name, text in mappings.items():
        (tmp_path / "hl7v2" / name).write_text(text, encoding="utf-8")
    return tmp_path


def load_error(directory: Path) -> MappingSpecError:
    with pytest.raises(MappingSpecError) as caught:
        MappingSet.load(directory)
    return caught.value


# --- the ORU mapping -----------------------------------------------------------------------------


def observations(bundle: dict[str, object]) -> list[dict[str, object]]:
    entries = bundle["entry"]
    assert isinstance(entries, list)
    return [e["resource"] for e in entries if e["resource"]["resourceType"] == "Observation"]


def test_local_lab_code_gets_its_loinc_coding() -> None:
    """OBX-3 in a local system (L, 99xxx) keeps its coding, in the adapter's local code system, and gains the LOINC one from the CSV."""
    result = MappingSet.load(ROOT / "mappings").map_hl7v2(parse(ORU), CTX)
    validate_bundle(result.bundle)
    codes = [o["code"] for o in observations(result.bundle)]
    loinc = "http://loinc.org"
    local = f"urn:passerelle:adapter:{CTX.source}:code"
    assert codes[0] == {
        "coding": [
            {"system": f"{local}:obx-3", "code": "GLY", "display": "Glycemie"},
            {
                "system": loinc,
                "code": "14749-6",
                "display": "Glucose [Moles/volume] in Serum or Plasma",
            },
        ]
    }
    assert codes[1]["coding"][0]["system"] == f"{local}:99chu"  # type: ignore[index]
    assert codes[1]["coding"][1]["code"] == "14682-9"  # type: ignore[index]
    assert codes[2] == {
        "coding": [{"system": f"{local}:obx-3", "code": "XYZ", "display": "Inconnu"}]
    }
    assert codes[3] == {"coding": [{"system": loinc, "code": "2160-0", "display": "Creatinine"}]}
    # OBX 4 sends 2160-0 (Creatinine [Mass/volume]) in umol/L: unit-mismatch, checked elsewhere.
    (finding,) = [f for f in result.findings if f.code != "unit-mismatch"]
    assert (finding.code, finding.location) == ("unknown-code", "OBX[3]-3")
    assert "lab-local-to-loinc" in finding.message


def test_abnormal_flags_come_from_the_shared_table() -> None:
    """OBX-8 is mapped with mappings/tables/hl7-0078-abnormal-flags.yaml."""
    result = MappingSet.load(ROOT / "mappings").map_hl7v2(parse(ORU), CTX)
    flags = [o.get("interpretation") for o in observations(result.bundle)]
    assert [f[0]["coding"][0]["code"] if f else None for f in flags] == ["N", "H", None, "HH"]  # type: ignore[index]


def test_result_records_the_tables_with_their_hashes() -> None:
    """MapResult.mappings lists the mapping and each shared table it used, with content hashes."""
    import hashlib

    result = MappingSet.load(ROOT / "mappings").map_hl7v2(parse(ORU), CTX)
    refs = {ref.id: ref.sha256 for ref in result.mappings}
    csv = (ROOT / "mappings/tables/lab-local-to-loinc.csv").read_bytes()
    assert refs["table:lab-local-to-loinc"] == hashlib.sha256(csv).hexdigest()
    assert set(refs) == {
        "hl7v2-oru-r01",
        "table:hl7-0001-administrative-sex",
        "table:hl7-0078-abnormal-flags",
        "table:lab-local-to-loinc",
    }


def test_the_real_tables_lint_clean() -> None:
    """mappings/ with its tables has no lint finding; a table file can be linted alone."""
    assert lint(ROOT / "mappings") == []
    assert lint(ROOT / "mappings/tables/lab-local-to-loinc.csv") == []


# --- sharing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param("gender-fr.csv", GENDER_CSV, id="csv"),
        pytest.param(
            "g.yaml",
            "id: gender-fr\nsystem: CHU PID-8\nvalues: {H: male, F: female}\ndefault: unknown\n",
            id="yaml",
        ),
    ],
)
def test_two_mappings_share_one_table(tmp_path: Path, name: str, text: str) -> None:
    """Two mapping files use the same table by name, as if it were declared in each."""
    directory = root(
        tmp_path, {name: text}, {"a.yaml": mapping("ADT^A01"), "b.yaml": mapping("ADT^A04")}
    )
    mappings = MappingSet.load(directory)
    for event in ("A01", "A04"):
        message = ADT.replace("ADT^A01^ADT_A01", f"ADT^{event}^ADT_A01")
        bundle = mappings.map_hl7v2(parse(message), CTX).bundle
        assert bundle["entry"][1]["resource"]["gender"] == "male"
    assert lint(directory) == []


def test_tables_are_not_mapping_files(tmp_path: Path) -> None:
    """A YAML table has no source:; under tables/ it is never read as a mapping."""
    directory = root(tmp_path, {"g.yaml": "id: gender-fr\nvalues: {H: male}\n"}, {})
    (directory / "hl7v2" / "a.yaml").write_text(mapping("ADT^A01"), encoding="utf-8")
    assert MappingSet.load(directory).supports("ADT^A01", "2.5.1")


# --- problems name file and line ----------------------------------------------------------------


def test_a_local_map_named_like_a_table_names_both_files(tmp_path: Path) -> None:
    """A file-local map with a table's name is an error, not an override: both files are named."""
    extra = "maps:\n  gender-fr: {values: {H: male}}\n"
    directory = root(
        tmp_path, {"gender-fr.csv": GENDER_CSV}, {"a.yaml": mapping("ADT^A01", extra=extra)}
    )
    error = load_error(directory)
    assert error.file == str(directory / "hl7v2/a.yaml")
    assert error.line == 2
    assert f"also the shared table in {directory / 'tables/gender-fr.csv'}:1" in error.reason
    (problem,) = lint(directory)
    assert (problem.file, problem.line) == (str(directory / "hl7v2/a.yaml"), 2)


def test_two_tables_with_one_name_name_both_files(tmp_path: Path) -> None:
    """Two tables called alike (a CSV stem and a YAML id) are refused, naming both files."""
    directory = root(
        tmp_path,
        {"gender-fr.csv": GENDER_CSV, "other.yaml": "# x\nid: gender-fr\nvalues: {H: male}\n"},
        {"a.yaml": mapping("ADT^A01")},
    )
    error = load_error(directory)
    assert (error.file, error.line) == (str(directory / "tables/other.yaml"), 2)
    assert str(directory / "tables/gender-fr.csv") in error.reason


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        pytest.param("code,target\nH,male\nF,female,x\n", 3, "the row has 3 columns", id="columns"),
        pytest.param("code,label\nH,male\n", 1, "expected code,system,target_code", id="header"),
        pytest.param("code,target\nH,male\nH,female\n", 3, "also on line 2", id="duplicate"),
        pytest.param("# c\ncode,target\n,male\n", 3, "the code is empty", id="empty-code"),
        pytest.param(
            "code,system,target_code,display\nGLY,,2345-7,Glucose\n",
            2,
            "system and target_code are required",
            id="coding-without-system",
        ),
        pytest.param("code,target\n", 1, "no rows", id="empty"),
    ],
)
def test_csv_problems_name_the_row(tmp_path: Path, text: str, line: int, reason: str) -> None:
    """A bad CSV table is refused at load and by lint at the line of the offending row."""
    directory = root(tmp_path, {"gender-fr.csv": text}, {})
    error = load_error(directory)
    assert (error.file, error.line) == (str(directory / "tables/gender-fr.csv"), line)
    assert reason in error.reason
    (problem,) = lint(directory)
    assert (problem.line, problem.col) == (line, 1)
    assert reason in problem.reason
    assert "expected" in problem.reason


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        pytest.param("gender-fr.csv", "code,target\nH,male\nF,femme\n", 3, id="csv"),
        pytest.param("g.yaml", "id: gender-fr\nvalues:\n  H: male\n  F: femme\n", 4, id="yaml"),
    ],
)
def test_an_entry_unfit_for_the_element_names_the_table_line(
    tmp_path: Path, name: str, text: str, line: int
) -> None:
    """Entries are checked against each element a rule maps them to, at the table's line."""
    directory = root(tmp_path, {name: text}, {"a.yaml": mapping("ADT^A01")})
    error = load_error(directory)
    assert (error.file, error.line) == (str(directory / "tables" / name), line)
    assert "not in the element's value set" in error.reason
    (problem,) = lint(directory)
    assert (problem.file, problem.line) == (str(directory / "tables" / name), line)


def test_yaml_table_schema_errors_have_lines(tmp_path: Path) -> None:
    """An unknown key in a YAML table is an error at its line, from load and from lint."""
    directory = root(tmp_path, {"g.yaml": "id: gender-fr\nvalues: {H: male}\ndefualt: x\n"}, {})
    error = load_error(directory)
    assert (error.line, error.key) == (3, "defualt")
    (problem,) = lint(directory)
    assert (problem.line, problem.col) == (3, 1)
    assert lint(directory / "tables" / "g.yaml") == [problem]


def test_an_unknown_map_lists_the_tables(tmp_path: Path) -> None:
    """map: naming neither a local map nor a table says which tables exist."""
    directory = root(
        tmp_path, {"gender-fr.csv": GENDER_CSV}, {"a.yaml": mapping("ADT^A01", "sexe")}
    )
    error = load_error(directory)
    assert (
        "no value map 'sexe' under maps: or in tables/; shared tables are gender-fr" in error.reason
    )
