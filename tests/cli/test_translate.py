"""``passerelle translate``: stdout carries the result alone, errors are one line.

In-process (typer's CliRunner) for the command's contract; a few runs of the installed
``passerelle`` entry point as a real process check what only a process shows (the console
script, logging kept off stdout, no traceback on stderr).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.settings import REPO_ROOT
from broker.testing import run_cli as cli

SAMPLES = REPO_ROOT / "tests" / "samples" / "hl7v2"
BROKEN = ("broken_no_msh", "broken_encoding_chars", "broken_missing_msh10", "adt_a17_unsupported")
VALID = sorted(p.stem for p in SAMPLES.glob("*.hl7") if p.stem not in BROKEN)
ADT = [name for name in VALID if name.startswith("adt_")]
FHIR_SAMPLES = ["adt_a01_v23", "adt_a01_latin1", "adt_a04", "adt_a08", "oru_r01_20obx"]
HL7V2_SAMPLES = ["adt_a01_v23", "adt_a01_latin1", "adt_a04", "adt_a08"]
ENTRY_POINT = Path(sys.executable).parent / "passerelle"
"""The console script pip installed beside this interpreter (``make test`` installs it)."""


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


def _installed(*args: str) -> Run:
    """Run the installed ``passerelle`` as a real process."""
    assert ENTRY_POINT.is_file(), f"{ENTRY_POINT} is missing: install the package (make test)"
    done = subprocess.run(
        [str(ENTRY_POINT), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    return Run(
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def _translate_args(name: str, to: str) -> tuple[str, ...]:
    return ("translate", str(SAMPLES / f"{name}.hl7"), "--to", to)


def _inbound_msh10(name: str) -> str:
    raw = (SAMPLES / f"{name}.hl7").read_bytes()
    msh = re.split(rb"\r\n|\r|\n", raw.lstrip(b"\xef\xbb\xbf"))[0]
    return msh.split(msh[3:4])[9].decode("ascii")


def test_the_sample_folder_holds_what_these_tests_expect():
    """Every sample is classified (valid or broken) and the named subsets exist."""
    names = {p.stem for p in SAMPLES.glob("*.hl7")}
    assert set(BROKEN) <= names
    assert set(FHIR_SAMPLES) <= names
    assert set(HL7V2_SAMPLES) <= set(ADT)
    assert len(VALID) >= 8


class TestTranslate:
    @pytest.mark.parametrize("name", VALID)
    def test_canonical_prints_one_envelope_and_nothing_else(self, name):
        """`--to canonical` exits 0, stderr empty, stdout exactly one Envelope JSON document."""
        run = cli(*_translate_args(name, "canonical"))
        assert run.code == 0, run.stderr
        assert run.stderr == ""
        document = json.loads(run.stdout)  # raises on a second document or stray text
        assert isinstance(document, dict)
        assert {"bundle", "event", "control_id"} <= document.keys()
        assert document["control_id"] == _inbound_msh10(name)
        assert document["bundle"]["resourceType"] == "Bundle"

    @pytest.mark.parametrize("name", FHIR_SAMPLES)
    def test_fhir_prints_a_message_bundle_led_by_its_message_header(self, name):
        """`--to fhir` prints a Bundle of type message whose first entry is a MessageHeader."""
        run = cli(*_translate_args(name, "fhir"))
        assert run.code == 0, run.stderr
        assert run.stderr == ""
        bundle = json.loads(run.stdout)
        assert bundle["resourceType"] == "Bundle"
        assert bundle["type"] == "message"
        assert bundle["entry"][0]["resource"]["resourceType"] == "MessageHeader"

    @pytest.mark.parametrize("name", HL7V2_SAMPLES)
    def test_hl7v2_prints_er7_that_keeps_the_inbound_control_id(self, name):
        """`--to hl7v2` prints ER7 starting with MSH| whose MSH-10 is the inbound MSH-10."""
        run = cli(*_translate_args(name, "hl7v2"))
        assert run.code == 0, run.stderr
        assert run.stderr == ""
        assert run.stdout.startswith("MSH|")
        msh = re.split(r"\r\n|\r|\n", run.stdout)[0]
        assert msh.split("|")[9] == _inbound_msh10(name)

    @pytest.mark.parametrize(
        "name",
        [
            pytest.param("broken_no_msh", id="no-msh"),
            pytest.param("broken_encoding_chars", id="bad-encoding-chars"),
            pytest.param("broken_missing_msh10", id="no-msh10"),
            pytest.param("adt_a17_unsupported", id="unsupported-a17"),
        ],
    )
    def test_a_bad_message_is_one_stderr_line_and_exit_1(self, name):
        """A broken or unmapped message: exit 1, stdout empty, exactly one stderr line, no traceback."""
        run = cli(*_translate_args(name, "canonical"))
        assert run.code == 1, run
        assert run.stdout == ""
        assert len(run.stderr.splitlines()) == 1, run.stderr
        assert not run.crashed, run.exception

    def test_a_missing_file_is_one_stderr_line_and_exit_1(self, tmp_path):
        """A file that does not exist: exit 1, stdout empty, exactly one stderr line, no traceback."""
        run = cli("translate", str(tmp_path / "absent.hl7"), "--to", "canonical")
        assert run.code == 1, run
        assert run.stdout == ""
        assert len(run.stderr.splitlines()) == 1, run.stderr
        assert not run.crashed, run.exception

    def test_an_unknown_target_is_a_usage_error(self):
        """`--to nonsense` exits 2 (usage error) and prints nothing on stdout."""
        run = cli("translate", str(SAMPLES / "adt_a04.hl7"), "--to", "nonsense")
        assert run.code == 2, run
        assert run.stdout == ""
        assert not run.crashed, run.exception


def test_translate_unmapped_names_each_dropped_segment_group():
    """``--unmapped`` lists each malformed OBX dropped, by location and rule; stdout has the rest."""
    run = cli(*_translate_args("oru_r01_50obx_malformed", "fhir"), "--unmapped")
    assert run.code == 0, run
    bundle = json.loads(run.stdout)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds.count("Observation") == 46
    dropped = [line for line in run.stderr.splitlines() if line.startswith("dropped: ")]
    assert [line.split(": ")[1] for line in dropped] == [
        "PATIENT_RESULT(1)/ORDER_OBSERVATION(1)/OBSERVATION(16)/OBX (observation require[2])",
        "PATIENT_RESULT(1)/ORDER_OBSERVATION(2)/OBSERVATION(13)/OBX (Observation.code)",
        "PATIENT_RESULT(1)/ORDER_OBSERVATION(3)/OBSERVATION(1)/OBX (observation require[1])",
        "PATIENT_RESULT(1)/ORDER_OBSERVATION(4)/OBSERVATION(4)/OBX (observation require[2])",
    ]
    assert "3,72" not in run.stderr


@pytest.fixture(scope="module")
def installed_runs() -> dict[str, Run]:
    """A good and a broken translation by the installed command, as two concurrent processes."""
    wanted = {
        "good": _translate_args("adt_a01_latin1", "fhir"),
        "broken": _translate_args("broken_missing_msh10", "canonical"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = pool.map(lambda args: _installed(*args), wanted.values())
        return dict(zip(wanted, runs, strict=True))


class TestTheInstalledCommand:
    """The console script as a real process: what the in-process runs above cannot show."""

    def test_a_translation_prints_the_bundle_alone(self, installed_runs):
        """`passerelle translate` exits 0 with stdout one JSON Bundle and stderr empty."""
        run = installed_runs["good"]
        assert run.code == 0, run.stderr
        assert run.stderr == ""
        assert json.loads(run.stdout)["resourceType"] == "Bundle"

    def test_a_broken_message_is_one_line_without_traceback(self, installed_runs):
        """A broken message: exit 1, stdout empty, one stderr line, no traceback."""
        run = installed_runs["broken"]
        assert run.code == 1, run
        assert run.stdout == ""
        assert len(run.stderr.splitlines()) == 1, run.stderr
        assert "Traceback" not in run.stderr


def test_translate_applies_the_registered_adapters_identifier_systems(tmp_path: Path) -> None:
    """``--adapter`` with a registration maps as the pipeline does for it: its identifier systems.

    Before, translate passed only the charset and the time zone: the IPP got the mappings'
    default system while the pipeline wrote the registered one (another conditional URL).
    """
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "his.yaml").write_text(
        "id: his-rabat\nname: HIS Rabat\ndirection: inbound\ntransport: mllp\n"
        "listen: 127.0.0.1:2575\nformat: hl7v2\n"
        "identifier_systems:\n"
        '  - {authority: CHUIS, type: PI, system: "https://chu-rabat.ma/fhir/sid/ipp"}\n',
        encoding="utf-8",
    )
    sample = str(SAMPLES / "adt_a01_v251.hl7")
    args = ("translate", sample, "--to", "fhir", "--adapter", "his-rabat")
    run = cli(*args, env={"PASSERELLE_ADAPTERS_DIR": str(adapters)})
    assert run.code == 0, run
    (patient,) = [
        e["resource"]
        for e in json.loads(run.stdout)["entry"]
        if e["resource"]["resourceType"] == "Patient"
    ]
    systems = {i["value"]: i["system"] for i in patient["identifier"]}
    assert systems["IPP0042317"] == "https://chu-rabat.ma/fhir/sid/ipp"
