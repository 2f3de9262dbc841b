"""`passerelle serve` as a real subprocess: titled workers, a guarded API, a clean stop that loses nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.settings import REPO_ROOT
from broker.testing import free_port, wait_for_port, wait_until, write_loopback_adapters
from passerelle_demo.peers.fhir_capture import FhirCapture
from passerelle_demo.peers.mllp_capture import MllpCapture
from passerelle_demo.synthetic import stream

pytestmark = pytest.mark.integration

TOKEN = "serve-test-token"
STOP_GRACE_S = 30.0


# --- processes ---------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, str] | None:
    """``(ppid, state, start time)`` of ``pid`` from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[1]), fields[0], fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid → start time (to tell a reused pid apart)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[1] == "Z":
            continue
        children.setdefault(stat[0], []).append(int(entry.name))
        started[int(entry.name)] = stat[2]
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = started[child]
                todo.append(child)
    return found


def survivors(known: dict[int, str]) -> list[int]:
    """The processes of ``known`` still alive (same pid and start time, not a zombie)."""
    alive = []
    for pid, start in known.items():
        stat = _stat(pid)
        if stat is not None and stat[1] != "Z" and stat[2] == start:
            alive.append(pid)
    return alive


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


# --- the served broker -------------------------------------------------------------------------


@dataclass
class Served:
    """One `passerelle serve` configuration, started and stopped as a subprocess."""

    root: Path
    inbound_port: int
    http_port: int
    fhir: FhirCapture
    lab: MllpCapture
    process: subprocess.Popen[bytes] | None = None
    seen: dict[int, str] = field(default_factory=dict)
    runs: int = 0

    def start(self) -> None:
        """Start `passerelle serve` and wait for its MLLP listener and its API."""
        self.runs += 1
        env = {
            **os.environ,
            "PASSERELLE_WORKERS": "2",
            "PASSERELLE_API_TOKEN": TOKEN,
            "PASSERELLE_LOG_FORMAT": "json",
        }
        env.pop("PASSERELLE_REDIS_URL", None)
        with (
            (self.root / f"serve-{self.runs}.out").open("wb") as out,
            (self.root / f"serve-{self.runs}.err").open("wb") as err,
        ):
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "broker",
                    "serve",
                    "--data-dir",
                    str(self.root / "data"),
                    "--adapters",
                    str(self.root / "adapters"),
                    "--http-port",
                    str(self.http_port),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        assert wait_for_port("127.0.0.1", self.inbound_port, 60), self.logs()
        assert wait_for_port("127.0.0.1", self.http_port, 60), self.logs()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def snapshot(self) -> dict[int, str]:
        """The serve process's current descendants, remembered for the final clean-up."""
        assert self.process is not None
        found = descendants(self.process.pid)
        self.seen.update(found)
        return found

    def terminate(self, timeout: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, wait ``timeout`` s; return the exit code (None if it had to be killed)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.snapshot()
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the serve process group and every descendant seen (they run in own sessions)."""
        if self.process is not None and self.process.poll() is None:
            # Only while not reaped: a reaped pid (and its group id) may belong to someone else.
            self.snapshot()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        for pid in survivors(self.seen):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def logs(self, tail: int = 6000) -> str:
        out = []
        for path in sorted(self.root.glob("serve-*.*")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Capture peers in-thread and the registrations that point the broker at them."""
    root = tmp_path_factory.mktemp("serve")
    fhir = FhirCapture(validate=False)
    lab = MllpCapture()
    fhir_port = fhir.start_in_thread()
    _, lab_port = lab.start_in_thread()
    handle = Served(root, free_port(), free_port(), fhir, lab)
    write_loopback_adapters(
        root / "adapters",
        inbound_port=handle.inbound_port,
        fhir_port=fhir_port,
        lab_port=lab_port,
        retry={"initial_delay_s": 0.2, "max_delay_s": 1.0},
    )
    try:
        yield handle
    finally:
        try:
            if handle.running:
                handle.terminate()
        finally:
            handle.kill()
            fhir.stop()
            lab.stop()


@pytest.fixture
def running(served: Served) -> Served:
    """The served broker, started if no earlier test left it running."""
    if not served.running:
        served.start()
    return served


def http_get(port: int, path: str, token: str | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# --- the promises ------------------------------------------------------------------------------


def test_worker_processes_are_titled_as_celery(running):
    """A descendant of `serve` shows "celery" in its command line (setproctitle's celeryd title)."""
    titles: list[str] = []

    def titled() -> bool:
        titles[:] = [cmdline(pid) for pid in running.snapshot()]
        return any("celery" in title for title in titles)

    assert wait_until(titled, 30, 0.5), f"{titles}\n{running.logs()}"


@pytest.mark.parametrize(
    ("path", "token", "status"),
    [
        pytest.param("/healthz", None, 200, id="healthz-open"),
        pytest.param("/api/queues", None, 401, id="queues-without-token"),
        pytest.param("/api/queues", "not-the-token", 401, id="queues-wrong-token"),
        pytest.param("/api/queues", TOKEN, 200, id="queues-with-token"),
    ],
)
def test_the_api_guards_everything_but_health(running, path, token, status):
    """`/healthz` is open; `/api/queues` needs the configured bearer token."""
    assert http_get(running.http_port, path, token) == status, running.logs()


def test_serve_prints_one_summary_and_the_ops_commands_find_it(running):
    """One start-up summary on stdout (console URL, where the token is, listeners with ports,
    subscribers with targets, never the token); the runtime file names this serve, so `ping`
    and `status` need no PASSERELLE_ setting."""
    from broker import running as runtime
    from broker.testing import run_cli

    out = running.root / f"serve-{running.runs}.out"
    assert wait_until(lambda: "  on call " in out.read_text(), 30), running.logs()
    text = out.read_text()
    assert text.count(" is running (pid ") == 1
    assert TOKEN not in text
    lines = [line.split() for line in text.splitlines()]
    assert ["console", "and", "API", f"http://127.0.0.1:{running.http_port}"] in lines
    assert ["API", "token", "in", "PASSERELLE_API_TOKEN", "(from", "the", "environment)"] in lines
    assert ["listeners", "chu-rabat-adt", "mllp", f"127.0.0.1:{running.inbound_port}"] in lines
    assert ["subscribers", "dmp-national", "fhir-rest", running.fhir.url] in lines
    assert ["lab-legacy", "mllp", f"127.0.0.1:{running.lab.port}"] in lines
    found, note = runtime.find()
    assert note is None
    assert found is not None
    assert running.process is not None
    assert found.pid == running.process.pid
    unset = {k: None for k in os.environ if k.startswith("PASSERELLE_")}
    pinged = run_cli("ping", "chu-rabat-adt", env=unset)
    assert pinged.code == 0, pinged.stderr
    assert f"127.0.0.1:{running.inbound_port} accepts connections" in pinged.stdout
    status = run_cli("status", "--json", env=unset)
    assert status.code == 0, status.stderr
    assert {s["id"] for s in json.loads(status.stdout)["subscribers"]} == {
        "dmp-national",
        "lab-legacy",
    }


def test_a_clean_stop_with_work_in_flight_loses_nothing(running):
    """SIGTERM right after 100 AAs, while the lab refuses them (AE) and the FHIR server is slow,
    so work is undelivered at the stop: exit 0, no child left, and a restart delivers all 100."""
    messages = [
        text
        for _, _, text in stream(
            100,
            seed=8080,
            mix={"ADT^A01": 1, "ADT^A04": 1, "ADT^A08": 1},
            control_prefix="TERM",
        )
    ]
    wanted = {f"TERM{i:09d}" for i in range(100)}
    envelopes_before = running.fhir.envelope_ids
    running.snapshot()
    running.lab.mode = "error"
    running.fhir.latency_s = 0.05
    try:
        with MllpClient("127.0.0.1", running.inbound_port, timeout=10) as client:
            codes = [read_ack(client.send(text.encode("utf-8"))).code for text in messages]
        assert codes == ["AA"] * 100

        stopping = running.snapshot()
        # What the subscribers had accepted when the stop came: some of the 100 are not.
        lab_undelivered = wanted - set(running.lab.accepted_ids())
        fhir_delivered = len(running.fhir.envelope_ids - envelopes_before)
        assert lab_undelivered, "everything was delivered before the stop: nothing was in flight"
        assert running.process is not None
        running.process.send_signal(signal.SIGTERM)
        try:
            code = running.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not stop within {STOP_GRACE_S} s of SIGTERM\n{running.logs()}")
        assert code == 0, running.logs()
        assert wait_until(lambda: not survivors(stopping), 5), [
            cmdline(pid) for pid in survivors(stopping)
        ]
    finally:
        running.lab.mode = "ack"
        running.fhir.latency_s = 0.0

    running.start()

    def lab_has_all() -> bool:
        return wanted <= set(running.lab.accepted_ids())

    def fhir_has_all() -> bool:
        return len(running.fhir.envelope_ids - envelopes_before) >= 100

    assert wait_until(lab_has_all, 90, 0.5), (
        f"never accepted by the MLLP subscriber: "
        f"{sorted(wanted - set(running.lab.accepted_ids()))}\n{running.logs()}"
    )
    assert wait_until(fhir_has_all, 90, 0.5), (
        f"FHIR envelopes: {len(running.fhir.envelope_ids - envelopes_before)} of 100\n"
        f"{running.logs()}"
    )
    lab_counts = Counter(c for c in running.lab.accepted_ids() if c in wanted)
    fhir_ids = [e for e in running.fhir.received_control_ids if e not in envelopes_before]
    print(
        f"undelivered at the SIGTERM: lab {len(lab_undelivered)}, fhir {100 - fhir_delivered}; "
        f"after restart: lab {len(lab_counts)} unique "
        f"({sum(lab_counts.values()) - len(lab_counts)} duplicates), fhir {len(set(fhir_ids))} "
        f"unique ({len(fhir_ids) - len(set(fhir_ids))} duplicates)"
    )
    assert len(set(fhir_ids)) == 100
