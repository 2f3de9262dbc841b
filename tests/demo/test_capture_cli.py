"""``passerelle capture fhir|mllp``: a capture peer on its own, as a real process."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from typing import IO

import pytest

from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.settings import REPO_ROOT
from broker.testing import run_cli
from passerelle_demo.synthetic import adt, patients

READ_TIMEOUT_S = 30


class Capture:
    """`python -m broker capture ...` with its stdout read line by line on a thread."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker", "capture", *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def line(self) -> str:
        try:
            return self.lines.get(timeout=READ_TIMEOUT_S)
        except queue.Empty:
            self.process.kill()
            _, err = self.process.communicate()
            pytest.fail(f"no output line within {READ_TIMEOUT_S} s; stderr: {err}")

    def stop(self) -> tuple[int, list[str]]:
        """SIGTERM; the exit code and the lines it printed meanwhile."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(READ_TIMEOUT_S)
        rest = []
        while True:
            try:
                rest.append(self.lines.get(timeout=1))
            except queue.Empty:
                break
        return code, rest


@pytest.fixture(name="start")
def fixture_start() -> Iterator:
    started: list[Capture] = []

    def start(*args: str) -> Capture:
        capture = Capture(*args)
        started.append(capture)
        return capture

    yield start
    for capture in started:
        if capture.process.poll() is None:
            capture.process.kill()
            capture.process.wait()


def test_mllp_capture_prints_where_it_listens_and_each_message_without_its_body(start):
    """One line per message: control id, event, the answer; no patient name."""
    patient = patients(1, seed=3)[0]
    capture = start("mllp", "--port", "0", "--mode", "error")
    first = capture.line()
    found = re.match(r"MLLP capture listening on 127\.0\.0\.1:(\d+) \(answers: error\)", first)
    assert found, first
    with MllpClient("127.0.0.1", int(found.group(1)), timeout=10) as client:
        reply = client.send(adt(patient, "A01", control_id="CAP0001").encode())
    assert read_ack(reply).code == "AE"
    line = capture.line()
    assert line.split()[1:] == ["CAP0001", "ADT^A01^ADT_A01", "answered", "AE"]
    assert patient.family not in line
    code, rest = capture.stop()
    assert code == 0
    assert rest == ["stopped after 1 message(s)"]


def test_mllp_capture_shows_bodies_when_asked(start):
    patient = patients(1, seed=4)[0]
    capture = start("mllp", "--port", "0", "--show")
    port = int(capture.line().split(":")[1].split()[0])
    with MllpClient("127.0.0.1", port, timeout=10) as client:
        client.send(adt(patient, "A01", control_id="CAP0002").encode())
    assert "CAP0002" in capture.line()
    assert capture.line().startswith("MSH|")
    assert any(
        line.startswith("PID|") and patient.family in line
        for line in [capture.line(), capture.line()]
    )


def test_fhir_capture_prints_each_request_without_its_body(start):
    """A POSTed transaction Bundle: method, path, status and what it is; never its content."""
    capture = start("fhir", "--port", "0")
    first = capture.line()
    found = re.match(r"FHIR capture listening on (http://127\.0\.0\.1:\d+/fhir) ", first)
    assert found, first
    base = found.group(1)
    with urllib.request.urlopen(f"{base}/metadata", timeout=10) as response:
        assert json.load(response)["resourceType"] == "CapabilityStatement"
    assert capture.line().split()[1:] == ["GET", "/fhir/metadata", "200"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"value": "env-123"},
        "entry": [
            {
                "resource": {"resourceType": "Patient", "name": [{"family": "SECRETNAME"}]},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    request = urllib.request.Request(
        base, json.dumps(bundle).encode(), {"Content-Type": "application/fhir+json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    line = capture.line()
    assert (
        line.split(None, 1)[1]
        == "POST /fhir  200  transaction Bundle, 1 entries, identifier env-123"
    )
    assert "SECRETNAME" not in line
    code, rest = capture.stop()
    assert code == 0
    assert rest == ["stopped after 1 Bundle(s)"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(("smtp",), "capture what? 'smtp' is neither fhir nor mllp", id="kind"),
        pytest.param(
            ("fhir", "--mode", "silent"),
            "--mode 'silent': a fhir capture answers ok, error, reject",
            id="mode",
        ),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, expected):
    done = run_cli("capture", *args)
    assert done.code == 2
    assert done.stderr == f"passerelle: {expected}\n"
