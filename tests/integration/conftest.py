"""The real stack for integration tests: embedded Redis, listener, Celery worker processes,
beat and API as separate processes, with loopback FHIR and MLLP capture subscribers; and a real
FHIR R4 server (Medplum's FHIR router from npm) for the tests that check what a server keeps."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.settings import REPO_ROOT
from broker.testing import free_port, wait_until
from passerelle_demo.loopback import LoopbackStack

# Module scope, not package: tests/ has no __init__.py, so pytest turns a "package" fixture into
# a session one, and the stack (Redis, Celery workers, beat, API) ran on through every test
# collected after tests/integration. Each stack now stops when the module that uses it ends.


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackStack]:
    """Start the whole broker as `passerelle serve` does, once per module that asks for it."""
    with LoopbackStack(
        tmp_path_factory.mktemp("stack"),
        workers=2,
        rekick_interval_s=1.0,
        claim_idle_s=10.0,
        delivery_timeout_s=2.0,
    ) as running:
        yield running


# -- A real FHIR R4 server (tests/fhir_server: Medplum's FHIR router from npm) ---------------

FHIR_SERVER_DIR = REPO_ROOT / "tests" / "fhir_server"
_NODE_NEEDED = (
    "the real FHIR server tests need Node.js >= 20 and npm (Debian: apt-get install nodejs npm); "
    "`make test` then installs the server's packages (npm ci in tests/fhir_server)"
)


class RealFhirServer:
    """``tests/fhir_server/server.mjs`` in a node process on a free loopback port.

    FHIR R4 at ``base_url`` (``http://127.0.0.1:PORT/fhir``), kept in memory; its request log
    goes to ``log_path``. ``client_ids=True`` lets clients create resources with their own ids
    (update-as-create), which the server refuses by default.
    """

    def __init__(self, node: str, log_path: Path, *, client_ids: bool = False) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.log_path = log_path
        args = [node, "--experimental-websocket", "server.mjs", str(self.port)]
        if client_ids:
            args.append("--client-ids")
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                args, cwd=FHIR_SERVER_DIR, stdout=log, stderr=subprocess.STDOUT
            )
        ready = wait_until(lambda: "ready " in self.logs() or self.process.poll() is not None, 60)
        if not ready or self.process.poll() is not None:
            self.stop()
            msg = f"the FHIR server did not start (exit code {self.process.returncode}):\n{self.logs()}"
            raise RuntimeError(msg)

    def logs(self) -> str:
        """What the server printed: the ready line, one line per request, errors."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _node_for_fhir_server() -> str:
    """The node binary, or a failure under CI=true (a skip with the reason elsewhere)."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"node is not on PATH: {_NODE_NEEDED}")
        pytest.skip(f"node is not on PATH: {_NODE_NEEDED}")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    major = int(version.stdout.strip().lstrip("v").split(".")[0] or 0)
    if major < 20:
        pytest.fail(f"node {version.stdout.strip()} is too old: {_NODE_NEEDED}")
    if not (FHIR_SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        pytest.fail(
            f"the FHIR server's packages are not installed in {FHIR_SERVER_DIR}: run "
            "`npm ci --prefix tests/fhir_server` (or `make test`, which does it)"
        )
    return node


@pytest.fixture(scope="module")
def start_fhir_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RealFhirServer]]:
    """Start a fresh, empty real FHIR server per call; all are stopped after the module."""
    node = _node_for_fhir_server()
    started: list[RealFhirServer] = []

    def start(*, client_ids: bool = False) -> RealFhirServer:
        log = tmp_path_factory.mktemp("fhir-server") / "server.log"
        server = RealFhirServer(node, log, client_ids=client_ids)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def fhir_server(start_fhir_server: Callable[..., RealFhirServer]) -> RealFhirServer:
    """One real FHIR server shared by the tests of the module that only need a server."""
    return start_fhir_server()
