"""``passerelle mappings lint|test`` and ``translate --trace``, run in-process with CliRunner."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli import app
from broker.mapping.golden import cases as golden_cases

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


def test_golden_cases_pass_and_a_mismatch_prints_a_diff(runner: CliRunner, tmp_path: Path) -> None:
    """All cases pass with exit 0; an edited expected file gives a unified diff and exit 1."""
    root = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", root)
    done = runner.invoke(app, ["mappings", "test", str(root)])
    assert done.exit_code == 0
    cases = len(golden_cases(root))
    assert done.stdout.startswith(f"{cases} passed, 0 failed")
    expected = root / "tests" / "adt_a01.expected.json"
    expected.write_text(expected.read_text().replace('"female"', '"male"'), encoding="utf-8")
    done = runner.invoke(app, ["mappings", "test", str(root)])
    assert done.exit_code == 1
    assert '-          "gender": "male",' in done.stdout
    assert '+          "gender": "female",' in done.stdout
    assert f"{cases - 1} passed, 1 failed" in done.stdout


def test_translate_trace_keeps_stdout(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """--trace leaves stdout as without it and writes trace lines and unmapped fields to stderr."""
    # Logging set up on CliRunner's stream would outlive it and break later tests' logging.
    monkeypatch.setattr("broker.cli.configure_logging", lambda *args: None)
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
