"""Promises of ``broker.mapping.lint``: every problem of every file, at its line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.mapping.lint import Problem, lint

ROOT = Path(__file__).resolve().parents[2]

HEADER = """\
id: {id}
source:
  format: hl7v2
  events: [{event}]
  versions: ["2.5.1"]
"""


def write(root: Path, name: str, text: str) -> Path:
    path = root / "hl7v2" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def where(problems: list[Problem]) -> list[tuple[int, int]]:
    return [(p.line, p.col) for p in problems]


def test_the_real_mappings_are_clean() -> None:
    """Every file shipped in mappings/ lints without a problem."""
    assert lint(ROOT / "mappings") == []


def test_every_compile_problem_is_reported_at_its_value(tmp_path: Path) -> None:
    """Bad target, bad field number, unknown segment, function and type all come out at once."""
    text = HEADER.format(id="t", event="ADT^A01") + (
        "resources:\n"
        "  - role: patient\n"
        "    type: Patient\n"
        "    rules:\n"
        "      - {target: birthdate, from: PID-7, function: date}\n"
        "      - {target: 'identifier[]', from: PID-99(*), function: cx_identifier}\n"
        "      - {target: 'name[]', from: QQQ-1(*), function: xpn_name}\n"
        "      - {target: 'telecom[]', from: ZPI-2(*), function: xtn_telecom}\n"
        "      - {target: 'address[]', from: PID-11(*), function: nope}\n"
        "  - role: enc\n"
        "    type: Encounterr\n"
        "    rules: [{target: status, value: finished}]\n"
    )
    problems = lint(write(tmp_path, "a.yaml", text))
    assert where(problems) == [(10, 18), (11, 40), (12, 34), (14, 58), (16, 11)]
    reasons = [p.reason for p in problems]
    assert "expected birthDate" in reasons[0]
    assert "expected a field number from 1 to 39" in reasons[1]
    assert "QQQ is not a segment of HL7 v2.5.1" in reasons[2]
    assert "unknown function 'nope'; expected one of" in reasons[3]
    assert "expected Encounter" in reasons[4]
    assert all("; expected" in r for r in reasons)


def test_schema_problems_are_all_reported(tmp_path: Path) -> None:
    """Unknown keys name the keys expected; bad values and broken rules each give a problem."""
    text = (
        "id: t\nsource:\n  format: hl7v2\n  events: [ADT^A01]\n"
        '  versions: ["2.5.1", "9.9"]\n  colour: red\n'
        "resources:\n  - role: patient\n    type: Patient\n    rules:\n"
        "      - {target: gender}\n"
    )
    problems = lint(write(tmp_path, "b.yaml", text))
    assert [str(p).split(": ", 1)[1] for p in problems][1] == (
        "unknown key 'colour'; expected one of events, format, versions"
    )
    assert where(problems) == [(5, 23), (6, 3), (11, 9)]


def test_yaml_syntax_error_is_a_finding(tmp_path: Path) -> None:
    """A YAML syntax error is one problem with the line and column of the fault."""
    problems = lint(write(tmp_path, "c.yaml", "id: x\nsource: [a\n  b: c\n"))
    assert len(problems) == 1
    assert str(problems[0]).startswith(f"{tmp_path}/hl7v2/c.yaml:3:4: YAML syntax error:")


@pytest.mark.parametrize(
    ("extra", "expected", "line"),
    [
        pytest.param("id: again\n", "duplicate key 'id'", 6, id="duplicate-key"),
        pytest.param(
            "maps:\n  unused: {values: {A: b}}\n",
            "value map 'unused' is never used",
            7,
            id="unused-map",
        ),
    ],
)
def test_silent_yaml_mistakes_are_findings(
    tmp_path: Path, extra: str, expected: str, line: int
) -> None:
    """Duplicate keys (YAML keeps the last) and unused value maps are reported."""
    text = (
        HEADER.format(id="t", event="ADT^A01")
        + extra
        + (
            "resources:\n  - role: p\n    type: Patient\n    rules: [{target: gender, value: male}]\n"
        )
    )
    problems = lint(write(tmp_path, "d.yaml", text))
    assert [p.reason.split(";")[0] for p in problems] == [expected]
    assert problems[0].line == line


def test_problems_across_files(tmp_path: Path) -> None:
    """An id or an event/version claimed by two files is reported on the second file."""
    body = (
        "resources:\n  - role: p\n    type: Patient\n    rules: [{target: gender, value: male}]\n"
    )
    write(tmp_path, "a.yaml", HEADER.format(id="same", event="ADT^A01") + body)
    write(tmp_path, "b.yaml", HEADER.format(id="same", event="ADT^A01") + body)
    problems = lint(tmp_path)
    assert [(Path(p.file).name, p.line) for p in problems] == [("b.yaml", 1), ("b.yaml", 4)]
    assert "also used by" in problems[0].reason
    assert "already mapped by" in problems[1].reason
