"""Promises of the string functions (concat, split, regex, upper, lower, trim), let: and coalesce."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.canonical import validate_bundle
from broker.errors import MappingError, MappingSpecError
from broker.mapping import MapContext, MappingSet
from broker.mapping.lint import lint
from broker.parsing.hl7v2 import parse

CTX = MapContext("env", "chu-rabat", received_at=datetime(2024, 3, 15, 10, 30, 5, tzinfo=UTC))
HEAD = """\
id: t
source: {format: hl7v2, events: [ADT^A01], versions: ["2.5.1"]}
"""
MSG = (
    "MSH|^~\\&|HIS|CHUIS|PASSERELLE|MS|20240315103000||ADT^A01^ADT_A01|M1|P|2.5.1\r"
    "PID|1|OLD-77|IPP-0042317-K^^^CHUIS^PI||el amrani^  Fatima   Zahra ^^^Dr||19620312|F|||"
    "12 Rue de Fes/Appt 4^^Rabat^^10000^MA||0600000000\r"
)


def load(tmp_path: Path, body: str) -> MappingSet:
    (tmp_path / "m.yaml").write_text(HEAD + textwrap.dedent(body), encoding="utf-8")
    return MappingSet.load(tmp_path)


def patient(tmp_path: Path, rules: str, let: str = "", message: str = MSG) -> dict[str, Any]:
    """Map MSG with one Patient built from ``rules`` (and ``let``) and return the Patient."""
    body = "resources:\n  - role: patient\n    type: Patient\n"
    if let:
        body += "    let:\n" + textwrap.indent(textwrap.dedent(let), "      ")
    body += "    rules:\n" + textwrap.indent(textwrap.dedent(rules), "      ")
    result = load(tmp_path, body).map_hl7v2(parse(message), CTX)
    validate_bundle(result.bundle)
    resource: dict[str, Any] = result.bundle["entry"][1]["resource"]
    return resource


def spec_error(tmp_path: Path, body: str) -> MappingSpecError:
    with pytest.raises(MappingSpecError) as caught:
        load(tmp_path, body)
    return caught.value


# --- the functions -------------------------------------------------------------------------------


def test_concat_joins_present_values_with_the_separator(tmp_path: Path) -> None:
    """concat joins the non-empty sources with its separator; an empty one adds no separator."""
    found = patient(
        tmp_path,
        """\
        - target: name[]
          rules:
            - {target: text, from: [PID-5.5, PID-5.2, PID-5.4, PID-5.1], function: concat}
            - target: family
              from: [PID-5.1, PID-2]
              function: concat
              args: {separator: " / "}
        """,
    )
    assert found["name"] == [
        {"text": "Dr Fatima   Zahra el amrani", "family": "el amrani / OLD-77"}
    ]


def test_concat_runs_when_its_first_source_is_empty(tmp_path: Path) -> None:
    """Unlike other several-source functions, concat does not need its first path present."""
    found = patient(
        tmp_path,
        """\
        - target: name[]
          rules:
            - {target: text, from: [PID-5.3, PID-5.1], function: concat}
        """,
    )
    assert found["name"] == [{"text": "el amrani"}]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param("{separator: '-', index: 2}", "0042317", id="second"),
        pytest.param("{separator: '-', index: -1}", "K", id="last"),
        pytest.param("{separator: '-'}", "IPP", id="first-by-default"),
        pytest.param("{separator: '-', index: 9}", None, id="no-such-part"),
    ],
)
def test_split_takes_the_nth_part(tmp_path: Path, args: str, expected: str | None) -> None:
    """split gives part n (from 1; -1 is the last) of the value; no such part, no element."""
    found = patient(
        tmp_path,
        f"""\
        - target: identifier[]
          rules:
            - {{target: value, from: PID-3.1, function: split, args: {args}}}
        """,
    )
    assert found.get("identifier") == ([{"value": expected}] if expected else None)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(r"{pattern: '(\d+)'}", "0042317", id="group-1-by-default"),
        pytest.param(r"{pattern: '^(?P<prefix>[A-Z]+)-', group: prefix}", "IPP", id="named"),
        pytest.param(r"{pattern: 'IPP-\d+', group: 0}", "IPP-0042317", id="whole-match"),
        pytest.param(r"{pattern: 'NNMAR(\d+)'}", None, id="no-match"),
    ],
)
def test_regex_extracts_a_group(tmp_path: Path, args: str, expected: str | None) -> None:
    """regex keeps one group of the first match; no match, no element."""
    found = patient(
        tmp_path,
        f"""\
        - target: identifier[]
          rules:
            - {{target: value, from: PID-3.1, function: regex, args: {args}}}
        """,
    )
    assert found.get("identifier") == ([{"value": expected}] if expected else None)


def test_upper_lower_trim(tmp_path: Path) -> None:
    """upper and lower change case; trim strips the ends and makes inner runs of spaces single."""
    found = patient(
        tmp_path,
        """\
        - target: name[]
          rules:
            - {target: family, from: PID-5.1, function: upper}
            - {target: "given[]", from: PID-5.2, function: trim}
            - {target: "prefix[]", from: PID-5.5, function: lower}
        """,
    )
    assert found["name"] == [{"family": "EL AMRANI", "given": ["Fatima Zahra"], "prefix": ["dr"]}]


def test_string_functions_apply_to_each_repetition(tmp_path: Path) -> None:
    """On a repeating path (PID-3(*)), a string function runs once per repetition."""
    message = MSG.replace("IPP-0042317-K^^^CHUIS^PI", "ipp-1^^^CHUIS^PI~cin-2^^^MA^NNMAR")
    found = patient(
        tmp_path,
        """\
        - target: identifier[]
          each: PID-3(*)
          rules:
            - {target: value, from: PID-3.1, function: upper}
        """,
        message=message,
    )
    assert found["identifier"] == [{"value": "IPP-1"}, {"value": "CIN-2"}]


@pytest.mark.parametrize(
    ("args", "key", "reason"),
    [
        pytest.param(
            "{pattern: '(unclosed'}",
            "resources[0].rules[0].rules[0].args.pattern",
            "invalid regular expression: missing ), unterminated subpattern at position 0",
            id="invalid-pattern",
        ),
        pytest.param(
            r"{pattern: '\d+', group: 1}",
            "resources[0].rules[0].rules[0].args",
            "the pattern has 0 group(s); expected group 0 to 0",
            id="no-such-group",
        ),
        pytest.param(
            "{group: 1}",
            "resources[0].rules[0].rules[0].args.pattern",
            "Field required",
            id="no-pattern",
        ),
    ],
)
def test_bad_regex_is_a_load_error_with_its_line(
    tmp_path: Path, args: str, key: str, reason: str
) -> None:
    """A regex is compiled at load: a bad pattern or group names the file, line and key."""
    body = f"""\
    resources:
      - role: patient
        type: Patient
        rules:
          - target: identifier[]
            rules:
              - {{target: value, from: PID-3.1, function: regex, args: {args}}}
    """
    error = spec_error(tmp_path, body)
    assert (error.line, error.key) == (9, key)
    assert reason in error.reason
    problems = lint(tmp_path)
    assert [(p.line, reason in p.reason) for p in problems] == [(9, True)]
    assert str(problems[0]).startswith(f"{tmp_path / 'm.yaml'}:9:")


def test_split_needs_a_separator(tmp_path: Path) -> None:
    """split without args.separator is refused at load."""
    error = spec_error(
        tmp_path,
        """\
        resources:
          - role: patient
            type: Patient
            rules:
              - target: identifier[]
                rules:
                  - {target: value, from: PID-3.1, function: split}
        """,
    )
    assert error.key == "resources[0].rules[0].rules[0].args.separator"
    assert error.line == 9


def test_a_string_function_cannot_fill_a_code(tmp_path: Path) -> None:
    """A string function gives a FHIR string: a code element needs function code (via let:)."""
    error = spec_error(
        tmp_path,
        """\
        resources:
          - role: patient
            type: Patient
            rules:
              - {target: gender, from: PID-8, function: lower}
        """,
    )
    assert "lower gives a FHIR string but gender is a code" in error.reason


# --- let: ----------------------------------------------------------------------------------------


def test_let_computes_a_value_reused_by_later_rules(tmp_path: Path) -> None:
    """A variable is computed once per instance from its path and read as $name by any rule."""
    found = patient(
        tmp_path,
        """\
        - target: identifier[]
          rules:
            - {target: system, value: "https://passerelle.ma/fhir/sid/ipp/chuis"}
            - {target: value, from: $ipp}
        - target: name[]
          rules:
            - {target: text, from: [$given, $family], function: concat}
            - {target: family, from: $family}
        """,
        let="""\
        ipp: {from: PID-3.1, function: regex, args: {pattern: 'IPP-(\\d+)'}}
        family: {from: PID-5.1, function: upper}
        given: {from: PID-5.2, function: trim}
        """,
    )
    assert found["identifier"][0]["value"] == "0042317"
    assert found["name"] == [{"text": "Fatima Zahra EL AMRANI", "family": "EL AMRANI"}]


def test_let_can_read_an_earlier_variable_and_a_map(tmp_path: Path) -> None:
    """A variable may read one defined above it; map: turns a code into a string."""
    body = """\
    maps:
      sex-fr: {values: {F: femme, M: homme}}
    resources:
      - role: patient
        type: Patient
        let:
          sex: {from: PID-8, map: sex-fr}
          shout: {from: $sex, function: upper}
        rules:
          - target: name[]
            rules:
              - {target: text, from: [$shout, $sex], function: concat, args: {separator: "/"}}
    """
    result = load(tmp_path, body).map_hl7v2(parse(MSG), CTX)
    assert result.bundle["entry"][1]["resource"]["name"] == [{"text": "FEMME/femme"}]


def test_let_is_per_instance(tmp_path: Path) -> None:
    """In a group loop each instance computes its own variables (one Observation per OBX)."""
    message = (
        "MSH|^~\\&|LIS|LAB|PASSERELLE|MS|20240316090000||ORU^R01^ORU_R01|L1|P|2.5.1\r"
        "PID|1||IPP1^^^CHUIS^PI\r"
        "OBR|1||F1|24323-8^Panel^LN\r"
        "OBX|1|ST|GLY^Glycemie^L||normal||||||F\r"
        "OBX|2|ST|CREA^Creatinine^L||haute||||||F\r"
    )
    (tmp_path / "m.yaml").write_text(
        textwrap.dedent(
            """\
            id: t
            source: {format: hl7v2, events: [ORU^R01], versions: ["2.5.1"]}
            groups:
              OBSERVATION: {starts: OBX}
            resources:
              - role: obs
                type: Observation
                each: OBSERVATION
                let:
                  label: {from: [OBX-3.1, OBX-5], function: concat, args: {separator: ": "}}
                rules:
                  - {target: status, value: final}
                  - {target: code.text, from: $label}
                  - {target: valueString, from: $label, function: lower}
            """
        ),
        encoding="utf-8",
    )
    bundle = MappingSet.load(tmp_path).map_hl7v2(parse(message), CTX).bundle
    observations = [e["resource"] for e in bundle["entry"][1:]]
    assert [(o["code"]["text"], o["valueString"]) for o in observations] == [
        ("GLY: normal", "gly: normal"),
        ("CREA: haute", "crea: haute"),
    ]


def test_let_keeps_references_working(tmp_path: Path) -> None:
    """A resource with let: still references the instances inside its scope (result[])."""
    message = (
        "MSH|^~\\&|LIS|LAB|PASSERELLE|MS|20240316090000||ORU^R01^ORU_R01|L1|P|2.5.1\r"
        "PID|1||IPP1^^^CHUIS^PI\r"
        "OBR|1||F1|24323-8^Panel^LN\r"
        "OBX|1|ST|GLY^Glycemie^L||normal||||||F\r"
    )
    (tmp_path / "m.yaml").write_text(
        textwrap.dedent(
            """\
            id: t
            source: {format: hl7v2, events: [ORU^R01], versions: ["2.5.1"]}
            groups:
              ORDER: {starts: OBR}
              OBSERVATION: {starts: OBX, within: ORDER}
            resources:
              - role: obs
                type: Observation
                each: OBSERVATION
                rules:
                  - {target: status, value: final}
                  - {target: code.text, from: OBX-3.2}
              - role: report
                type: DiagnosticReport
                each: ORDER
                let:
                  panel: {from: OBR-4.2, function: upper}
                rules:
                  - {target: status, value: final}
                  - {target: code.text, from: $panel}
                  - {target: "result[]", reference: obs}
            """
        ),
        encoding="utf-8",
    )
    bundle = MappingSet.load(tmp_path).map_hl7v2(parse(message), CTX).bundle
    validate_bundle(bundle)
    obs, report = bundle["entry"][1]["resource"], bundle["entry"][2]["resource"]
    assert report["code"]["text"] == "PANEL"
    assert report["result"] == [{"reference": f"urn:uuid:{obs['id']}"}]


def test_a_finding_about_a_variable_names_its_source(tmp_path: Path) -> None:
    """A value derived by let: that fails later is reported at the field it came from."""
    body = """\
    maps:
      g: {system: HL7 table 0001, values: {M: male}}
    resources:
      - role: patient
        type: Patient
        let:
          sex: {from: PID-8, function: upper}
        rules:
          - {target: gender, from: $sex, map: g}
    """
    result = load(tmp_path, body).map_hl7v2(parse(MSG), CTX)
    (finding,) = result.findings
    assert (finding.code, finding.location) == ("unknown-code", "PID-8")


@pytest.mark.parametrize(
    ("let", "rules", "line", "reason"),
    [
        pytest.param(
            "a: {from: PID-5.1}",
            '- {target: "name[]", rules: [{target: family, from: $b}]}',
            9,
            "no variable '$b' is defined above; expected one of let: ($a)",
            id="unknown-variable",
        ),
        pytest.param(
            "a: {from: $b}\nb: {from: PID-5.1}",
            '- {target: "name[]", rules: [{target: family, from: $a}]}',
            7,
            "no variable '$b' is defined above; expected one of let: (none)",
            id="used-before-defined",
        ),
        pytest.param(
            "a: {from: PID-3(*).1}",
            '- {target: "name[]", rules: [{target: family, from: $a}]}',
            7,
            "can give several values; a variable holds one",
            id="repeating-source",
        ),
        pytest.param(
            "a: {from: PID-5, function: xpn_name}",
            '- {target: "name[]", rules: [{target: family, from: $a}]}',
            7,
            "xpn_name gives a FHIR HumanName; a variable holds a string",
            id="not-a-string",
        ),
        pytest.param(
            "Bad: {from: PID-5.1}",
            "- {target: gender, value: female}",
            7,
            "expected lower-case letters, digits and _",
            id="bad-name",
        ),
    ],
)
def test_let_problems_are_load_errors(
    tmp_path: Path, let: str, rules: str, line: int, reason: str
) -> None:
    """Unknown or later variables, repeating paths and non-string functions are refused at load."""
    body = (
        "resources:\n  - role: patient\n    type: Patient\n    let:\n"
        + textwrap.indent(let, "      ")
        + "\n    rules:\n"
        + textwrap.indent(rules, "      ")
        + "\n"
    )
    error = spec_error(tmp_path, body)
    assert reason in error.reason
    assert error.line == line


# --- coalesce ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        pytest.param("[PID-6.1, PID-5.1, PID-2]", "el amrani", id="first-empty"),
        pytest.param("[PID-2, PID-5.1]", "OLD-77", id="first-present"),
        pytest.param("[PID-6.1, PID-9.1]", None, id="all-empty"),
        pytest.param("[PID-6.1, $upper]", "EL AMRANI", id="with-variable"),
    ],
)
def test_coalesce_reads_the_first_non_empty_source(
    tmp_path: Path, paths: str, expected: str | None
) -> None:
    """coalesce: tries its paths (or $variables) in order and reads the first with a value."""
    found = patient(
        tmp_path,
        f"""\
        - target: name[]
          rules:
            - {{target: family, coalesce: {paths}}}
        """,
        let="upper: {from: PID-5.1, function: upper}\n",
    )
    assert found.get("name") == ([{"family": expected}] if expected else None)


def test_coalesce_with_a_function_and_default(tmp_path: Path) -> None:
    """coalesce feeds the value found to the function; default applies when none has one."""
    found = patient(
        tmp_path,
        """\
        - target: deceasedDateTime
          coalesce: [PID-29, PID-7]
          function: datetime
        - target: name[]
          rules:
            - {target: family, coalesce: [PID-6.1, PID-9.1], default: INCONNU}
        """,
    )
    assert found["deceasedDateTime"] == "1962-03-12"
    assert found["name"] == [{"family": "INCONNU"}]


def test_coalesce_in_let_and_when_on_a_variable(tmp_path: Path) -> None:
    """A variable may coalesce; when: may test a variable (present, equals, in, matches)."""
    found = patient(
        tmp_path,
        """\
        - {target: active, value: true, when: {path: $id, matches: "OLD-[0-9]+"}}
        - {target: gender, value: other, when: {path: $id, equals: nope}}
        """,
        let="id: {coalesce: [PID-4.1, PID-2.1]}\n",
    )
    assert found["active"] is True
    assert "gender" not in found


def test_coalesce_needs_two_paths(tmp_path: Path) -> None:
    """coalesce with one path is a schema error; with from: too, the rule has two sources."""
    error = spec_error(
        tmp_path,
        """\
        resources:
          - role: patient
            type: Patient
            rules:
              - {target: gender, coalesce: [PID-8], map: g}
        """,
    )
    assert error.key.startswith("resources[0].rules[0].coalesce")


def test_a_variable_failing_at_run_time_is_a_mapping_error() -> None:
    """A let: that raises is reported like a rule: the file, the variable and its source path."""
    from broker.mapping.hl7v2_in.rules import Let

    def boom(scope: Any, run: Any) -> None:
        raise ValueError

    let = Let("x", boom, "m.yaml", "resources[0].let.x", "PID-5.1")
    with pytest.raises(MappingError) as caught:
        let.value(None, None)  # type: ignore[arg-type]
    assert "resources[0].let.x of m.yaml failed on PID-5.1" in str(caught.value)


def test_a_site_reads_the_base_resources_variables(tmp_path: Path) -> None:
    """A site mapping's rules may read the let: variables of the base resource they patch."""
    (tmp_path / "m.yaml").write_text(
        HEAD
        + textwrap.dedent(
            """\
            resources:
              - role: patient
                type: Patient
                let:
                  family: {from: PID-5.1, function: upper}
                rules:
                  - {target: name[], rules: [{target: family, from: $family}]}
            """
        ).replace("name[]", '"name[]"'),
        encoding="utf-8",
    )
    (tmp_path / "site.yaml").write_text(
        textwrap.dedent(
            """\
            id: site
            extends: t
            source: {adapters: [chu-rabat]}
            resources:
              - role: patient
                replace:
                  - target: "name[]"
                    rules: [{target: text, from: [PID-5.2, $family], function: concat}]
            """
        ),
        encoding="utf-8",
    )
    result = MappingSet.load(tmp_path).map_hl7v2(parse(MSG), CTX)
    assert result.bundle["entry"][1]["resource"]["name"] == [{"text": "Fatima   Zahra EL AMRANI"}]
