"""The whole broker as separate processes on loopback, with capture subscribers: LoopbackStack.

Every process (embedded Redis, listener, Celery workers, beat, API) runs as ``passerelle serve``
runs them, for what only separate processes can show (a killed worker, a restart, the wire); the
integration tests and ``make bench`` use it. Its in-process counterpart, with the same
registrations, is ``broker.testing.EagerBroker``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import httpx
import redis

from broker.settings import Settings
from broker.supervisor import Supervisor
from broker.testing import (
    envelope_control_ids,
    free_port,
    wait_for_port,
    write_loopback_adapters,
)
from passerelle_demo.peers.fhir_capture import FhirCapture
from passerelle_demo.peers.mllp_capture import MllpCapture

__all__ = ["API_TOKEN", "LoopbackStack"]

API_TOKEN = "loopback-stack-token"
"""The bearer token of the stack's API (a test value, never a real secret)."""


class LoopbackStack:
    """The whole broker as separate processes, with capture subscribers on loopback.

    One inbound MLLP adapter (``chu-rabat-adt``), a FHIR REST subscriber (``dmp-national``, a
    :class:`~passerelle_demo.peers.fhir_capture.FhirCapture`) and an MLLP subscriber (``lab-legacy``, a
    :class:`~passerelle_demo.peers.mllp_capture.MllpCapture`), all on free ports; used by the integration
    tests and ``make bench``.

    Usage::

        with LoopbackStack(tmp_path, workers=2) as stack:
            ...  # send to 127.0.0.1:stack.inbound_port
    """

    running: ClassVar[set[LoopbackStack]] = set()
    """The stacks of this process between ``start()`` and ``stop()`` (the tests check that none
    is left running while unrelated tests run)."""

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
        policies: dict[str, dict[str, Any]] | None = None,
        **settings: Any,
    ) -> None:

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
        self._policies = policies
        self._settings_overrides = settings
        self.settings: Settings | None = None
        self.supervisor: Any = None
        self.redis: Any = None
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None
        self._store: Any = None

    def __enter__(self) -> LoopbackStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the peers, write the registrations, start the broker, wait for the listener."""
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
            policies=self._policies,
        )
        options: dict[str, Any] = {
            "data_dir": self.data_dir,
            "adapters_dir": adapters,
            "http_port": free_port(),
            "api_token": API_TOKEN,
            **self._settings_overrides,
        }
        self.settings = Settings(**options)
        self.supervisor = Supervisor(self.settings, log_dir=self.data_dir / "logs")
        LoopbackStack.running.add(self)
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
        if self._store is not None:
            self._store.dispose()
            self._store = None
        LoopbackStack.running.discard(self)

    def api_client(self, timeout: float = 30) -> httpx.Client:
        """An HTTP client for the stack's API, with its bearer token; close it (``with``).

        Waits for the API to accept connections first: the stack's start waits for the MLLP
        listener only, and on a loaded machine the API process may still be starting.
        """
        assert self.settings is not None, "start the stack first"
        if not wait_for_port("127.0.0.1", self.settings.http_port, timeout):
            msg = f"the API did not start; logs:\n{self.logs()}"
            raise RuntimeError(msg)
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.settings.http_port}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=timeout,
        )

    @property
    def store(self) -> Any:
        """The message store's engine (``None`` until the writer has created it)."""
        assert self.settings is not None, "start the stack first"
        if self._store is None:
            from broker.errors import BrokerError
            from broker.store import connect

            try:
                self._store = connect(self.settings.effective_store_url)
            except BrokerError:
                return None  # the writer has not created it yet
        return self._store

    def control_ids(self, envelope_ids: Sequence[str]) -> dict[str, str]:
        """Envelope id → MSH-10 of the envelopes found in Redis or, once dropped, the store."""
        return envelope_control_ids(self.redis, envelope_ids, self.store)

    def logs(self, tail: int = 4000) -> str:
        """The end of every child's log, for failure messages."""
        out = []
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)
