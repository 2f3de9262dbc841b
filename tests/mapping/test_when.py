"""Promises of ``when:`` combinations (all/any/not): compiled at load, linted at their line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from broker.errors import MappingSpecError
from broker.mapping import MapContext, MappingSet
from broker.mapping.lint import lint
from broker.mapping.spec import Condition
from broker.parsing.hl7v2 import parse

CTX = MapContext("env", "lab", received_at=datetime(2024, 3, 16, 9, 0, tzinfo=UTC))

MAPPING = """\
id: t-when
source: {{format: hl7v2, events: ["ORU^R01"], versions: ["2.5.1"]}}
groups:
  OBSERVATION: {{starts: OBX}}
resources:
  - role: observation
    type: Observation
    each: OBSERVATION
    rules:
      - {{target: status, value: final}}
      - {{target: code, value: {{text: result}}}}
      - target: valueString
        from: OBX-5
        when: {when}
"""

MESSAGE = (
    "MSH|^~\\&|LIS|LAB|PASSERELLE|MS|20240316090000||ORU^R01^ORU_R01|W1|P|2.5.1\r"
    "PID|1||BE123456^^^MA^NNMAR||EL AMRANI^Fatima\r"
    "OBX|1|NM|1-0^A^LN||5\r"
    "OBX|2|ST|2-0^B^LN||texte\r"
    "OBX|3|ST|3-0^C^LN||\r"
    "OBX|4|TX|4-0^D^LN||long\r"
)


def values(tmp_path: Path, when: str) -> list[str | None]:
    """valueString of each of the four OBX when the rule has ``when``."""
    (tmp_path / "m.yaml").write_text(MAPPING.format(when=when), encoding="utf-8")
    bundle = MappingSet.load(tmp_path).map_hl7v2(parse(MESSAGE), CTX).bundle
    return [
        e["resource"].get("valueString")
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
    ]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        pytest.param("{path: OBX-2, in: [ST, TX]}", [None, "texte", None, "long"], id="single"),
        pytest.param(
            "{all: [{path: OBX-2, in: [ST, TX, NM]}, {path: OBX-3.2, equals: B}]}",
            [None, "texte", None, None],
            id="all",
        ),
        pytest.param(
            "{any: [{path: OBX-2, equals: NM}, {path: OBX-2, equals: TX}]}",
            ["5", None, None, "long"],
            id="any",
        ),
        pytest.param("{not: {path: OBX-2, equals: ST}}", ["5", None, None, "long"], id="not"),
        pytest.param(
            "{all: [{not: {path: OBX-2, equals: NM}}, {any: [{path: OBX-3.2, matches: '[BD]'}]}]}",
            [None, "texte", None, "long"],
            id="nested",
        ),
    ],
)
def test_combinations_select_the_observations(
    tmp_path: Path, when: str, expected: list[str | None]
) -> None:
    """all: every part holds, any: one does, not: it does not; nesting composes them."""
    assert values(tmp_path, when) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param({"all": []}, "at least 1 item", id="empty-all"),
        pytest.param(
            {"all": [{"path": "PID-3", "present": True}], "path": "PID-3"},
            "no path",
            id="all-with-path",
        ),
        pytest.param(
            {
                "any": [{"path": "PID-3", "present": True}],
                "not": {"path": "PID-3", "present": True},
            },
            "exactly one of all, any or not",
            id="two-combinators",
        ),
        pytest.param({"present": True}, "needs a path", id="no-path"),
        pytest.param({"not": {"path": "PID-3"}}, "exactly one of present", id="bad-part"),
    ],
)
def test_malformed_combinations_are_refused(data: dict[str, object], reason: str) -> None:
    """A combination has one combinator and no test of its own; each part is checked too."""
    with pytest.raises(ValidationError, match=reason):
        Condition.model_validate(data)


def test_a_bad_sub_condition_names_its_line_at_load(tmp_path: Path) -> None:
    """A misspelt path inside all: is a MappingSpecError at that part's line."""
    when = "\n          all:\n            - {path: OBX-2, in: [ST]}\n            - {path: OBX-99, present: true}"
    (tmp_path / "m.yaml").write_text(MAPPING.format(when=when), encoding="utf-8")
    with pytest.raises(MappingSpecError) as caught:
        MappingSet.load(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'm.yaml'}:17: ")
    assert "resources[0].rules[2].when.all[1].path" in str(caught.value)


def test_lint_reports_every_bad_sub_condition(tmp_path: Path) -> None:
    """Lint goes on after a bad part: each bad sub-condition is reported at its own line."""
    when = (
        "\n          any:\n            - {path: OBX-99, present: true}"
        "\n            - {not: {path: OBX-2, matches: '('}}"
    )
    path = tmp_path / "hl7v2" / "m.yaml"
    path.parent.mkdir()
    path.write_text(MAPPING.format(when=when), encoding="utf-8")
    problems = lint(path)
    assert [p.line for p in problems] == [16, 17]
    assert "invalid regular expression" in problems[1].reason
