"""The tools' contract (issue 3, Tools): output formats and exit codes of ``passerelle mappings
lint``, ``mappings test`` and ``translate --trace``, on the shipped mappings and on broken copies.

Exit codes: 0 success, 1 findings (or failing cases, or a bad message), 2 usage errors.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli import app

ROOT = Path(__file__).resolve().parents[2]
FINDING = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<what>.+); expected .+$")
TRACE = re.compile(
    r"^(?P<file>\S+):(?P<line>\d+) (?P<source>.+) -> (?P<target>\S+) = (?P<value>.+)$"
)


@pytest.fixture(name="runner")
def fixture_runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # Logging set up on CliRunner's stream would outlive it and break later tests' logging.
    monkeypatch.setattr("broker.log.configure_logging", lambda *args: None)
    return CliRunner()


@pytest.fixture(name="broken", scope="module")
def fixture_broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of mappings/ with one deliberate problem of each kind, in several files."""
    root = tmp_path_factory.mktemp("broken") / "mappings"
    shutil.copytree(ROOT / "mappings", root)
    adt = root / "hl7v2" / "adt.yaml"
    text = adt.read_text(encoding="utf-8")
    text = text.replace("        from: PID-7\n", "        from: PID-99\n", 1)  # no such field
    text = text.replace("      - target: gender\n", "      - target: gendre\n", 1)  # no element
    adt.write_text(text, encoding="utf-8")
    vxu = root / "hl7v2" / "vxu_v04.yaml"  # a schema error: that file's other checks wait for it
    vxu_text = vxu.read_text(encoding="utf-8").replace("\ndescription:", "\ndescripton:")
    vxu.write_text(vxu_text, encoding="utf-8")
    oru = root / "hl7v2" / "oru_r01.yaml"
    oru.write_text(oru.read_text(encoding="utf-8").replace("id: ", "id: [", 1), encoding="utf-8")
    fhir = root / "fhir" / "r4.yaml"
    fhir_text = fhir.read_text(encoding="utf-8")
    fhir_text = fhir_text.replace(
        "{check: subject.exists(), reason: an encounter",
        "{check: subject.exists(, reason: an encounter",
    )
    fhir.write_text(fhir_text, encoding="utf-8")
    site = root / "fhir" / "sites" / "chu-rabat-fhir.yaml"
    site.write_text(site.read_text(encoding="utf-8").replace("adapters:", "adaptors:"), "utf-8")
    return root


def line_of(file: Path, needle: str) -> int:
    """The 1-based line of the first line of ``file`` holding ``needle``."""
    lines = file.read_text(encoding="utf-8").splitlines()
    return next(number for number, line in enumerate(lines, 1) if needle in line)


def findings(stdout: str) -> dict[tuple[str, int], str]:
    """(file name relative to the mappings root's parent, line) → the finding's line."""
    found = {}
    for line in stdout.splitlines():
        match = FINDING.match(line)
        assert match, f"not file:line:col: what is wrong; what was expected: {line}"
        found[(match["file"], int(match["line"]))] = line
    return found


class TestLint:
    def test_every_problem_is_reported_at_its_value(self, runner: CliRunner, broken: Path) -> None:
        """Each problem of each file, YAML syntax errors included, at the offending value's line."""
        done = runner.invoke(app, ["mappings", "lint", str(broken)])
        assert done.exit_code == 1
        found = findings(done.stdout)
        adt, fhir = broken / "hl7v2" / "adt.yaml", broken / "fhir" / "r4.yaml"
        vxu = broken / "hl7v2" / "vxu_v04.yaml"
        site = broken / "fhir" / "sites" / "chu-rabat-fhir.yaml"
        expected = {
            (str(adt), line_of(adt, "from: PID-99")): "PID has 40 fields",
            (str(adt), line_of(adt, "target: gendre")): "no element 'gendre'",
            (str(vxu), line_of(vxu, "descripton:")): "unknown key 'descripton'",
            (str(fhir), line_of(fhir, "subject.exists(, reason")): "not valid FHIRPath",
            (str(site), line_of(site, "adaptors:")): "unknown key 'adaptors'",
        }
        oru_syntax = [line for line in done.stdout.splitlines() if "YAML syntax error" in line]
        assert len(oru_syntax) == 1
        assert "oru_r01.yaml" in oru_syntax[0]
        for (file, line), what in expected.items():
            assert what in found.get((file, line), ""), (file, line, done.stdout)

    def test_a_fhir_file_alone(self, runner: CliRunner, broken: Path) -> None:
        """Linting one FHIR inbound file reports its problems only, each with what was expected."""
        site = broken / "fhir" / "sites" / "chu-rabat-fhir.yaml"
        done = runner.invoke(app, ["mappings", "lint", str(site)])
        assert done.exit_code == 1
        found = findings(done.stdout)
        assert {file for file, _ in found} == {str(site)}
        assert "expected one of adapters, " in found[(str(site), line_of(site, "adaptors:"))]
        assert "missing key 'adapters'" in done.stdout

    def test_a_broken_table_is_one_finding(self, runner: CliRunner, tmp_path: Path) -> None:
        """A table that does not load is reported at its row; the rules naming it are not."""
        root = tmp_path / "mappings"
        shutil.copytree(ROOT / "mappings", root)
        table = root / "tables" / "lab-local-to-loinc.csv"
        table.write_text(table.read_text(encoding="utf-8").replace(",14682-9,", ",", 1), "utf-8")
        done = runner.invoke(app, ["mappings", "lint", str(root)])
        assert done.exit_code == 1
        found = findings(done.stdout)
        assert list(found) == [(str(table), line_of(table, "CREA,"))]
        assert "expected 4 (code,system,target_code,display)" in done.stdout

    @pytest.mark.parametrize(
        "args",
        [["mappings", "lint", "/nonexistent/mappings"], ["mappings", "lint", "--bogus"]],
        ids=["missing-path", "unknown-option"],
    )
    def test_usage_errors_exit_2(self, runner: CliRunner, args: list[str]) -> None:
        assert runner.invoke(app, args).exit_code == 2

    def test_a_folder_without_mapping_files_is_a_usage_error(
        self, runner: CliRunner, tmp_path: Path
    ) -> None:
        """Linting the wrong folder is not a silent 'no problems'."""
        done = runner.invoke(app, ["mappings", "lint", str(tmp_path)])
        assert done.exit_code == 2
        assert "no mapping files" in done.stderr


class TestGoldenCases:
    def test_a_root_without_tests_is_a_usage_error(self, runner: CliRunner, tmp_path: Path) -> None:
        done = runner.invoke(app, ["mappings", "test", str(tmp_path)])
        assert done.exit_code == 2
        assert "tests/" in done.stderr

    def test_mappings_that_do_not_load_exit_1(self, runner: CliRunner, broken: Path) -> None:
        done = runner.invoke(app, ["mappings", "test", str(broken)])
        assert done.exit_code == 1
        assert done.stderr.startswith("passerelle: ")
        assert len(done.stderr.splitlines()) == 1

    def test_a_fhir_case_mismatch_is_a_unified_diff(
        self, runner: CliRunner, golden_root: Callable[..., Path]
    ) -> None:
        """PATH is a mappings root; its cases are in PATH/tests/, FHIR JSON ones too."""
        root = golden_root("fhir_patient", "adt_a01")  # the whole set runs in test_golden.py
        expected = root / "tests" / "fhir_patient.expected.json"
        document = json.loads(expected.read_text(encoding="utf-8"))
        document["partition_key"] = "changed"
        expected.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", "utf-8")
        done = runner.invoke(app, ["mappings", "test", str(root)])
        assert done.exit_code == 1
        assert f"--- {expected}\n" in done.stdout
        assert '-  "partition_key": "changed"' in done.stdout
        assert "@@ " in done.stdout
        assert re.search(
            r"^\d+ passed, [1-9]\d* failed, \d+ unreviewed, \d+ golden case", done.stdout, re.M
        )


class TestTranslate:
    @pytest.mark.parametrize(
        "case",
        ["tests/samples/hl7v2/adt_a01_v251.hl7", "mappings/tests/fhir_transaction.json"],
        ids=["hl7v2", "fhir"],
    )
    def test_trace_lines_and_stdout(self, runner: CliRunner, case: str) -> None:
        """--trace: stdout as without it; stderr one file:line source -> target = value line per
        element written, then the unmapped report."""
        args = ["translate", str(ROOT / case), "--to", "fhir"]
        plain = runner.invoke(app, args)
        traced = runner.invoke(app, [*args, "--trace"])
        assert (plain.exit_code, traced.exit_code) == (0, 0)
        # Bundle.timestamp is the time of the run.
        stamp = re.compile(r'"timestamp": "[^"]+"')
        assert stamp.sub("", traced.stdout) == stamp.sub("", plain.stdout)
        assert plain.stderr == ""
        *steps, unmapped = traced.stderr.splitlines()
        assert steps
        assert unmapped.startswith("unmapped: ")
        for step in steps:
            match = TRACE.match(step)
            assert match, step
            assert Path(ROOT / match["file"]).is_file(), step
            json.loads(match["value"])

    def test_formats_are_detected(self, runner: CliRunner, tmp_path: Path) -> None:
        """ER7 and FHIR JSON (after a BOM and blanks) map; JSON that is not FHIR is refused."""
        patient = (ROOT / "mappings" / "tests" / "fhir_patient.json").read_bytes()
        bom = tmp_path / "patient.json"
        bom.write_bytes(b"\xef\xbb\xbf \n" + patient)
        assert runner.invoke(app, ["translate", str(bom), "--to", "fhir"]).exit_code == 0
        other = tmp_path / "other.json"
        other.write_text('{"hello": "world"}', encoding="utf-8")
        done = runner.invoke(app, ["translate", str(other)])
        assert done.exit_code == 1
        assert "not a FHIR resource" in done.stderr

    @pytest.mark.parametrize(
        ("args", "code"),
        [
            (["translate", "tests/samples/hl7v2/adt_a17_unsupported.hl7"], 1),
            (["translate", "tests/samples/hl7v2/broken_no_msh.hl7"], 1),
            (["translate", "tests/samples/hl7v2/adt_a01_v251.hl7", "--to", "xml"], 2),
            (
                ["translate", "tests/samples/hl7v2/no_such_file.hl7"],
                1,
            ),  # tests/cli/test_translate.py too
            (
                ["translate", "tests/samples/hl7v2/adt_a01_v251.hl7", "--mappings", "/nonexistent"],
                2,
            ),
        ],
        ids=["no-mapping", "not-hl7", "bad-to", "no-file", "no-mappings"],
    )
    def test_exit_codes(self, runner: CliRunner, args: list[str], code: int) -> None:
        """A bad message exits 1 with a one-line reason, a bad option 2; never a stack trace."""
        args = [args[0], str(ROOT / args[1]), *args[2:]]
        done = runner.invoke(app, args)
        assert done.exit_code == code
        assert done.stdout == ""
        assert len(done.stderr.splitlines()) == 1
        assert done.stderr.startswith("passerelle: ")

    def test_the_canonical_envelope_carries_the_unmapped_report(self, runner: CliRunner) -> None:
        """--to canonical: the envelope lists what no rule read, as the pipeline's does."""
        case = ROOT / "tests" / "samples" / "hl7v2" / "adt_a01_zsegments.hl7"
        done = runner.invoke(app, ["translate", str(case)])
        assert done.exit_code == 0
        unmapped = json.loads(done.stdout)["unmapped"]
        assert {"ZPI-2", "ZVI-1", "PID-15"} <= set(unmapped)
        assert "PID-3" not in unmapped
