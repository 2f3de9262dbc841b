"""A plain install works: the built wheel, in a clean virtual environment, serves one message.

What the Docker image and a production install do (``pip install .``), checked end to end: the
wheel is built from a copy of the sources, installed without the dev extras into a fresh
virtual environment (dependencies resolved from the package index, as a site would), and
``passerelle serve`` runs from a temporary directory with nothing but an adapters directory:
the base mappings must come from the package, and every module the broker's processes import
(kombu's Redis transport among them) must be a declared dependency.

Cost, measured on the shared 2-core machine: 47 s to 94 s in all, depending on its load
(building the wheel and installing it: 20-55 s with ``--no-compile`` and pip's cache; starting
``serve``, one message and the clean stop: 19-35 s).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.ack import read_ack
from broker.adapters.mllp import MllpClient, MllpError
from broker.settings import REPO_ROOT
from broker.testing import free_port, wait_for_port, wait_until
from passerelle_demo.peers.fhir_capture import FhirCapture
from passerelle_demo.synthetic import adt, patients

pytestmark = pytest.mark.integration

SOURCES = ("pyproject.toml", "README.md", "broker", "mappings")
"""What the Dockerfile copies before ``pip install .`` (adapters are configuration, not code)."""
PIP_TIMEOUT_S = 900
STOP_GRACE_S = 60


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run ``command``; its output, or a test failure that shows it."""
    done = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done.stdout


def clean_env(venv: Path) -> dict[str, str]:
    """This process's environment without anything that would reach the repository or its venv."""
    dropped = ("PASSERELLE_", "PYTHON", "VIRTUAL_ENV", "COV_CORE_", "COVERAGE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the built wheel and its declared dependencies only."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    env = clean_env(root / "venv")
    pip = [sys.executable, "-m", "pip"]
    # A path, never a bare name: pip would look a bare name up on the package index.
    run([*pip, "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(source)], root, env, 600)
    (wheel,) = (root / "dist").glob("passerelle-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], root, env, 120)
    python = root / "venv" / "bin" / "python"
    install = [*pip, "--python", str(python), "install", "-q", "--prefer-binary", "--no-compile"]
    # As the Dockerfile: the pinned versions of constraints.txt.
    constraints = ["-c", str(REPO_ROOT / "constraints.txt")]
    run([*install, *constraints, str(wheel)], root, env, PIP_TIMEOUT_S)
    return root / "venv"


@pytest.fixture
def capture() -> Iterator[FhirCapture]:
    """The FHIR capture peer the subscriber posts to, in this process."""
    peer = FhirCapture(validate=False)
    peer.start_in_thread()
    try:
        yield peer
    finally:
        peer.stop()


def write_adapters(directory: Path, inbound_port: int, fhir_url: str) -> None:
    """One MLLP source and one FHIR REST subscriber: all a site has to write."""
    directory.mkdir()
    (directory / "hospital.yaml").write_text(
        "id: chu-rabat-adt\nname: CHU Rabat ADT\ndirection: inbound\ntransport: mllp\n"
        f"listen: 127.0.0.1:{inbound_port}\nformat: hl7v2\n",
        encoding="utf-8",
    )
    (directory / "dmp.yaml").write_text(
        "id: dmp-national\nname: DMP\ndirection: outbound\ntransport: fhir-rest\n"
        f"insecure_http: true\nurl: {fhir_url}\nsubscribe:\n  events: ['ADT^A01']\n"
        "retry:\n  initial_delay_s: 0.2\n  max_delay_s: 1.0\n",
        encoding="utf-8",
    )


def test_the_installed_wheel_serves_a_message_with_only_an_adapters_directory(
    venv: Path, capture: FhirCapture, tmp_path: Path
) -> None:
    """Clean venv, no dev extras, no repository: `serve` answers AA and delivers the Patient."""
    env = clean_env(venv)
    python = str(venv / "bin" / "python")
    probe = (
        "import importlib.util, broker; print(broker.__file__);"
        "print(importlib.util.find_spec('pytest') is None)"
    )
    where, no_pytest = run([python, "-c", probe], tmp_path, env, 120).splitlines()
    assert Path(where).is_relative_to(venv), f"broker imported from {where}, not the venv"
    assert no_pytest == "True", "the dev extras are installed in the clean venv"

    inbound_port, http_port = free_port(), free_port()
    write_adapters(tmp_path / "adapters", inbound_port, capture.url)
    serve_env = {**env, "PASSERELLE_WORKERS": "1", "PASSERELLE_LOG_FORMAT": "json"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(venv / "bin" / "passerelle"),
                "serve",
                "--adapters",
                str(tmp_path / "adapters"),
                "--data-dir",
                str(tmp_path / "data"),
                "--http-port",
                str(http_port),
            ],
            cwd=tmp_path,
            env=serve_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def logs() -> str:
        return log.read_text(errors="replace")[-8000:]

    def listening_or_gone() -> bool:
        return process.poll() is not None or wait_for_port("127.0.0.1", inbound_port, 0.5)

    try:
        assert wait_until(listening_or_gone, 180), logs()
        assert process.poll() is None, f"serve exited with {process.returncode}\n{logs()}"
        message = adt(patients(1, seed=2608)[0], "A01", control_id="WHEEL-1")
        try:
            with MllpClient("127.0.0.1", inbound_port, timeout=30) as client:
                ack = read_ack(client.send(message.encode("utf-8")))
        except MllpError as exc:
            pytest.fail(f"no ACK: {exc}\n{logs()}")
        assert ack.code == "AA", logs()
        assert wait_until(lambda: capture.unique_resources().get("Patient") == 1, 180, 0.5), (
            f"{capture.status_counts()}\n{logs()}"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_GRACE_S) == 0, logs()
    finally:
        if process.poll() is None:
            # Its children die with it (PR_SET_PDEATHSIG, broker.children.die_with_parent).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    listed = (
        "import importlib.metadata as m;"
        "print('\\n'.join(sorted(str(f) for f in m.files('passerelle') or ())))"
    )
    files = run([python, "-c", listed], tmp_path, env, 120).splitlines()
    prefix = "passerelle_mappings/"
    shipped = [
        f.removeprefix(prefix)
        for f in files
        if f.startswith(prefix) and f.endswith((".yaml", ".csv"))
    ]
    base = REPO_ROOT / "mappings"
    expected = sorted(
        p.relative_to(base).as_posix()
        for p in base.rglob("*")
        if p.is_file() and p.suffix in (".yaml", ".csv") and p.relative_to(base).parts[0] != "tests"
    )
    assert shipped == expected, "the wheel's base mappings differ from mappings/ (tests/ aside)"
