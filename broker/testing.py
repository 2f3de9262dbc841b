"""Helpers for tests, the demo and benchmarks: free ports, polling, throw-away registrations."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

__all__ = [
    "API_TOKEN",
    "LoopbackStack",
    "free_port",
    "wait_for_port",
    "wait_until",
    "write_adapter",
    "write_loopback_adapters",
]

API_TOKEN = "loopback-stack-token"
"""The bearer token of the stack's API (a test value, never a real secret)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; return its last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> bool:
    """Wait until something accepts TCP connections on ``host:port``."""

    def accepting() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return wait_until(accepting, timeout, 0.1)


def write_adapter(directory: Path, spec: dict[str, Any]) -> Path:
    """Write one adapter registration as ``<id>.yaml`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{spec['id']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def write_loopback_adapters(
    directory: Path,
    *,
    inbound_port: int,
    fhir_port: int,
    lab_port: int,
    retry: dict[str, Any],
    ack_timeout_s: float = 2.0,
    inbound: dict[str, Any] | None = None,
    events: dict[str, list[str]] | None = None,
) -> None:
    """Write the three loopback registrations: an MLLP source and FHIR and MLLP subscribers.

    ``chu-rabat-adt`` listens on ``inbound_port`` (``inbound`` adds options to it);
    ``dmp-national`` posts to ``http://127.0.0.1:fhir_port/fhir`` (ADT A01/A04/A08, ORU R01);
    ``lab-legacy`` sends ADT to ``127.0.0.1:lab_port``. ``events`` replaces a subscriber's
    events by id (``{"dmp-national": [..., "Bundle"]}`` for FHIR input).
    """
    events = events or {}
    source = {
        "id": "chu-rabat-adt",
        "name": "CHU Rabat",
        "direction": "inbound",
        "transport": "mllp",
        "listen": f"127.0.0.1:{inbound_port}",
        **(inbound or {}),
    }
    write_adapter(directory, source)
    dmp = {
        "id": "dmp-national",
        "name": "DMP",
        "direction": "outbound",
        "transport": "fhir-rest",
        "url": f"http://127.0.0.1:{fhir_port}/fhir",
        "subscribe": {
            "events": events.get("dmp-national", ["ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01"])
        },
        "retry": retry,
    }
    write_adapter(directory, dmp)
    lab = {
        "id": "lab-legacy",
        "name": "Lab",
        "direction": "outbound",
        "transport": "mllp",
        "connect": f"127.0.0.1:{lab_port}",
        "subscribe": {"events": events.get("lab-legacy", ["ADT^*"])},
        "ack_timeout_s": ack_timeout_s,
        "retry": retry,
    }
    write_adapter(directory, lab)


class LoopbackStack:
    """The whole broker as separate processes, with capture subscribers on loopback.

    One inbound MLLP adapter (``chu-rabat-adt``), a FHIR REST subscriber (``dmp-national``, a
    :class:`~broker.peers.fhir_capture.FhirCapture`) and an MLLP subscriber (``lab-legacy``, a
    :class:`~broker.peers.mllp_capture.MllpCapture`), all on free ports; used by the integration
    tests and ``make bench``.

    Usage::

        with LoopbackStack(tmp_path, workers=2) as stack:
            ...  # send to 127.0.0.1:stack.inbound_port
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        fhir_validate: bool = True,
        retry: dict[str, Any] | None = None,
        ack_timeout_s: float = 2.0,
        peers: tuple[Any, Any] | None = None,
        inbound: dict[str, Any] | None = None,
        events: dict[str, list[str]] | None = None,
        **settings: Any,
    ) -> None:
        from broker.peers.fhir_capture import FhirCapture
        from broker.peers.mllp_capture import MllpCapture
        from broker.settings import Settings

        self.data_dir = data_dir
        # `peers` replaces the in-process captures (the benchmark runs them in other processes).
        if peers is None:
            peers = (FhirCapture(validate=fhir_validate, keep_bundles=fhir_validate), MllpCapture())
        self.fhir: Any = peers[0]
        self.lab: Any = peers[1]
        self.inbound_port = free_port()
        self._retry = retry or {"initial_delay_s": 0.2, "max_delay_s": 1.0}
        self._ack_timeout_s = ack_timeout_s
        self._inbound = inbound or {}
        self._events = events
        self._settings_overrides = settings
        self.settings: Settings | None = None
        self.supervisor: Any = None
        self.redis: Any = None
        self._settings_cls = Settings
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> LoopbackStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the peers, write the registrations, start the broker, wait for the listener."""
        import redis

        from broker.supervisor import Supervisor

        fhir_port = self.fhir.start_in_thread()
        _, lab_port = self.lab.start_in_thread()
        adapters = self.data_dir / "adapters"
        write_loopback_adapters(
            adapters,
            inbound_port=self.inbound_port,
            fhir_port=fhir_port,
            lab_port=lab_port,
            retry=self._retry,
            ack_timeout_s=self._ack_timeout_s,
            inbound=self._inbound,
            events=self._events,
        )
        options: dict[str, Any] = {
            "data_dir": self.data_dir,
            "adapters_dir": adapters,
            "http_port": free_port(),
            "api_token": API_TOKEN,
            **self._settings_overrides,
        }
        self.settings = self._settings_cls(**options)
        self.supervisor = Supervisor(self.settings, log_dir=self.data_dir / "logs")
        self.supervisor.start()
        # As `passerelle serve` does: a child that exits is restarted (a Celery worker exits on
        # some broker connection losses, e.g. a Redis restart, and its successor takes over).
        self._watching.clear()
        self._watcher = threading.Thread(target=self._watch, name="stack-watcher", daemon=True)
        self._watcher.start()
        self.redis = redis.Redis.from_url(self.settings.effective_redis_url)
        if not wait_for_port("127.0.0.1", self.inbound_port, 30):
            self.stop()
            msg = f"the MLLP listener did not start; logs:\n{self.logs()}"
            raise RuntimeError(msg)

    def _watch(self) -> None:
        while not self._watching.wait(0.5):
            self.supervisor.watch_once()

    def stop(self) -> None:
        """Stop the broker and the peers."""
        if self.redis is not None:
            self.redis.close()
        # The supervisor first: a child the watcher thread restarted (Redis included) gets
        # SIGTERM from Linux when that thread ends (PR_SET_PDEATHSIG is per thread), which must
        # not come before the ordered stop.
        if self.supervisor is not None:
            self.supervisor.stop()
        self._watching.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        self.fhir.stop()
        self.lab.stop()

    def api_client(self, timeout: float = 30) -> httpx.Client:
        """An HTTP client for the stack's API, with its bearer token; close it (``with``)."""
        assert self.settings is not None, "start the stack first"
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.settings.http_port}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=timeout,
        )

    def logs(self, tail: int = 4000) -> str:
        """The end of every child's log, for failure messages."""
        out = []
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)
