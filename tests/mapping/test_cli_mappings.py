"""``passerelle mappings lint|test|review|style`` and ``translate --trace``, run in-process with CliRunner."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "samples" / "hl7v2"


@pytest.fixture(name="runner")
def fixture_runner() -> CliRunner:
    return CliRunner()


def test_lint_clean_exits_0(runner: CliRunner) -> None:
    """Linting the shipped mappings prints no problem and exits 0."""
    done = runner.invoke(app, ["mappings", "lint", str(ROOT / "mappings")])
    assert (done.exit_code, done.stdout) == (0, "")


def test_lint_findings_exit_1(runner: CliRunner, tmp_path: Path) -> None:
    """Each problem is one file:line:col line on stdout; findings exit 1."""
    (tmp_path / "bad.yaml").write_text("id: x\nsource: [a\n", encoding="utf-8")
    done = runner.invoke(app, ["mappings", "lint", str(tmp_path)])
    assert done.exit_code == 1
    assert done.stdout.startswith(f"{tmp_path}/bad.yaml:3:1: YAML syntax error")


def test_lint_missing_path_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    """A path that does not exist exits 2."""
    assert runner.invoke(app, ["mappings", "lint", str(tmp_path / "nope")]).exit_code == 2


def test_golden_cases_print_a_status_per_case_and_a_mismatch_prints_a_diff(
    runner: CliRunner, golden_root: Callable[..., Path]
) -> None:
    """Each case prints PASSED, FAILED (with its unified diff) or UNREVIEWED; any but passed exits 1."""
    root = golden_root("adt_a01", "fhir_patient")
    sha = hashlib.sha256((root / "tests" / "adt_a01.expected.json").read_bytes()).hexdigest()
    (root / "tests" / "reviews.yaml").write_text(
        f"adt_a01:\n  sha256: {sha}\n  reviewed: 2026-12-02\n  by: T\n  against: [input]\n",
        encoding="utf-8",
    )
    done = runner.invoke(app, ["mappings", "test", str(root)])
    assert done.exit_code == 1
    lines = done.stdout.splitlines()
    assert lines[0] == "PASSED     adt_a01"
    assert lines[1] == "UNREVIEWED fhir_patient: no review record in tests/reviews.yaml"
    assert lines[2].startswith("1 passed, 0 failed, 1 unreviewed, 2 golden case(s) in ")
    assert "passerelle mappings review" in done.stderr
    expected = root / "tests" / "adt_a01.expected.json"
    expected.write_text(expected.read_text().replace('"female"', '"male"'), encoding="utf-8")
    done = runner.invoke(app, ["mappings", "test", str(root)])
    assert done.exit_code == 1
    assert done.stdout.startswith("FAILED     adt_a01\n--- ")
    assert '-          "gender": "male",' in done.stdout
    assert '+          "gender": "female",' in done.stdout
    assert "0 passed, 1 failed, 1 unreviewed, 2 golden case(s)" in done.stdout


def test_golden_cases_all_reviewed_exit_0(
    runner: CliRunner, golden_root: Callable[..., Path]
) -> None:
    """`mappings review` then `mappings test`: every case passed, exit 0."""
    root = golden_root("adt_a01", "chu-rabat-adt/adt_a01_zpi")
    args = ["--by", "T", "--against", "the input", "--mappings", str(root)]
    done = runner.invoke(app, ["mappings", "review", "adt_a01", "chu-rabat-adt/adt_a01_zpi", *args])
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("reviewed adt_a01 sha256 ")
    done = runner.invoke(app, ["mappings", "test", str(root)])
    assert (done.exit_code, done.stdout.splitlines()[-1].split(" golden")[0]) == (
        0,
        "2 passed, 0 failed, 0 unreviewed, 2",
    )


def test_update_marks_a_changed_case_unreviewed(
    runner: CliRunner, golden_root: Callable[..., Path]
) -> None:
    """`mappings test --update` rewrites a changed expected file; the case is then UNREVIEWED."""
    root = golden_root("adt_a01")
    args = ["--by", "T", "--against", "the input", "--mappings", str(root)]
    assert runner.invoke(app, ["mappings", "review", "adt_a01", *args]).exit_code == 0
    case = root / "tests" / "adt_a01.hl7"
    case.write_bytes(case.read_bytes().replace(b"Fatima", b"Fatna"))
    done = runner.invoke(app, ["mappings", "test", "--update", str(root)])
    assert done.exit_code == 1
    assert done.stdout.startswith("UNREVIEWED adt_a01: the expected file changed since its review")


def test_review_of_a_failing_case_is_refused(
    runner: CliRunner, golden_root: Callable[..., Path]
) -> None:
    """`mappings review` of a case whose output differs exits 1 and writes no record."""
    root = golden_root("adt_a01")
    expected = root / "tests" / "adt_a01.expected.json"
    expected.write_text(expected.read_text().replace('"female"', '"male"'), encoding="utf-8")
    args = ["--by", "T", "--against", "x", "--mappings", str(root)]
    done = runner.invoke(app, ["mappings", "review", "adt_a01", *args])
    assert done.exit_code == 1
    assert done.stderr.startswith("passerelle: adt_a01: its output differs from")
    assert not (root / "tests" / "reviews.yaml").exists()


def test_a_broken_reviews_file_prints_file_line_errors(
    runner: CliRunner, golden_root: Callable[..., Path]
) -> None:
    """Every problem of reviews.yaml is one `passerelle: file:line: key: reason` line, exit 1."""
    root = golden_root("adt_a01")
    reviews = root / "tests" / "reviews.yaml"
    reviews.write_text("adt_a01:\n  sha256: nothex\n  by: T\n", encoding="utf-8")
    done = runner.invoke(app, ["mappings", "test", str(root)])
    assert done.exit_code == 1
    assert done.stderr.splitlines() == [
        f"passerelle: {reviews}:2: adt_a01.sha256: String should match pattern '^[0-9a-f]{{64}}$'",
        f"passerelle: {reviews}:2: adt_a01.reviewed: Field required",
        f"passerelle: {reviews}:2: adt_a01.against: Field required",
    ]


THIRD_PARTY = ROOT / "tests" / "samples" / "thirdparty" / "hl7v2"


def test_style_prints_each_finding_with_its_fhir_path_and_exits_1(runner: CliRunner) -> None:
    """`mappings style` maps a message and prints file: FHIR path: rule: detail per finding."""
    sample = THIRD_PARTY / "pythonhl7_oru_r01_glucose.hl7"
    done = runner.invoke(app, ["mappings", "style", str(sample), "--json"])
    rows = json.loads(done.stdout)
    assert done.exit_code == (1 if rows else 0)
    done = runner.invoke(app, ["mappings", "style", str(sample)])
    assert done.stdout.splitlines() == [
        f"{r['file']}: {r['path']}: {r['rule']}: {r['detail']}" for r in rows
    ]
    assert done.stderr.splitlines()[-1] == f"{len(rows)} finding(s) in 1 message(s), 0 refused"


def test_style_of_a_bundle_breaking_the_rules_lists_them(runner: CliRunner, tmp_path: Path) -> None:
    """A FHIR input whose Observation has carets in its display is listed; its code without a
    system is not, because FHIR intake gives a sender's code the adapter's local system."""
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"code": "GLU", "display": "Glucose^L"}]},
        "subject": {
            "identifier": {"system": "https://passerelle.ma/fhir/sid/cin", "value": "BE123456"}
        },
        "valueQuantity": {"value": 5.2, "unit": "mmol/L"},
    }
    file = tmp_path / "obs.json"
    file.write_text(json.dumps(observation), encoding="utf-8")
    done = runner.invoke(app, ["mappings", "style", str(tmp_path), "--json"])
    assert done.exit_code == 1
    rules = sorted((r["rule"], r["path"].split(".resource.")[-1]) for r in json.loads(done.stdout))
    assert rules == [("hl7-syntax", "code.coding[0].display")]


def test_style_of_clean_and_refused_messages(runner: CliRunner, tmp_path: Path) -> None:
    """No finding exits 0; a refused message is reported on stderr and exits 1; no path exits 2."""
    done = runner.invoke(app, ["mappings", "style", str(THIRD_PARTY / "fhirconv_adt04_251.hl7")])
    assert (done.exit_code, done.stdout) == (0, "")
    done = runner.invoke(app, ["mappings", "style", str(SAMPLES / "adt_a17_unsupported.hl7")])
    assert done.exit_code == 1
    assert "refused: no mapping for ADT^A17 v2.3" in done.stderr
    assert runner.invoke(app, ["mappings", "style", str(tmp_path / "nope.hl7")]).exit_code == 2


def test_translate_trace_keeps_stdout(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """--trace leaves stdout as without it and writes trace lines and unmapped fields to stderr."""
    # Logging set up on CliRunner's stream would outlive it and break later tests' logging.
    monkeypatch.setattr("broker.log.configure_logging", lambda *args: None)
    args = ["translate", str(SAMPLES / "adt_a01_zsegments.hl7"), "--to", "hl7v2"]
    plain = runner.invoke(app, args)
    traced = runner.invoke(app, [*args, "--trace"])
    assert traced.exit_code == 0
    # MSH-7 and EVN-2 carry the time of rendering: the two runs may straddle a second.
    stamp = re.compile(r"\d{14}[+-]\d{4}")
    assert stamp.sub("<now>", traced.stdout) == stamp.sub("<now>", plain.stdout)
    assert plain.stderr == ""
    lines = traced.stderr.splitlines()
    assert any(line.endswith('PID-8 -> Patient.gender = "female"') for line in lines)
    assert lines[-1].startswith("unmapped: ")
    assert "ZPI-1" in lines[-1]
