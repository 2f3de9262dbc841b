"""The listener process: one MLLP server per inbound adapter, journalling before each ACK.

The MLLP server frames bytes; the ``HL7v2Intake`` decides what becomes of them. ``mllp_server``
is the whole of the glue between the two: each frame's payload goes to the intake and the reply
of its ``Outcome`` is framed back.

While the servers run, a heartbeat marks each one in Redis (``pl:listening:SRC``, expiring after
three housekeeping periods), so ``/metrics`` and the alerts know a listener is up even from
another host or container than the listener's. Beside it goes the number of peers connected
(``pl:peers:SRC``, for the overview), written at each beat and soon after a peer connects or
leaves (one write for a burst of them, never on a message's path), and the connections refused
since the last beat (``connection_refused:REASON`` of ``pl:adapter:SRC``: not allowed by
``allow_from``, over the connection cap, failed TLS handshake) for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis.asyncio

from broker import keys
from broker.adapters.mllp import Frame, MllpServer
from broker.audit import sink as audit_sink
from broker.config import Config, load_config
from broker.dispatch import AsyncKicker
from broker.gctuning import tune_gc
from broker.intake import offload
from broker.intake.hl7v2 import HL7v2Intake
from broker.intake.journal import Journal
from broker.log import get_logger
from broker.settings import Settings
from broker.worker.celery_app import create_celery

__all__ = ["Listeners", "mllp_server", "run_listeners"]

log = get_logger(__name__)

_SETTLE_S = 0.2
"""After a peer connects or leaves, how long the heartbeat waits for others before it writes."""


def mllp_server(
    host: str,
    port: int,
    intake: HL7v2Intake,
    *,
    max_bytes: int,
    name: str = "",
    on_connections: Callable[[], None] | None = None,
    tls: ssl.SSLContext | None = None,
    admit: Callable[[str], bool] | None = None,
    max_connections: int | None = None,
    idle_timeout_s: float | None = None,
    read_timeout_s: float | None = None,
    on_refused: Callable[[str], None] | None = None,
) -> MllpServer:
    """An MLLP server on ``host:port`` whose frames go to ``intake``; it answers their ACKs.

    Args:
        host: the address to bind.
        port: the port to bind (0: any free port).
        intake: the adapter's HL7 v2 intake.
        max_bytes: the largest message taken whole; a larger one is answered AR (over-size).
        name: the adapter id, for logs.
        on_connections: called when a peer connects or leaves (``MllpServer``).
        tls: the server context of MLLP over TLS (``TlsSpec.server_context``), or None.
        admit: tells whether a peer's IP address may connect (``AdapterSpec.admits``).
        max_connections: connections held at once; one more is closed (``MllpServer``).
        idle_timeout_s: close a connection that starts no message for this long.
        read_timeout_s: close a connection whose message is not finished this long after it
            started.
        on_refused: called with the reason of each connection refused (``MllpServer``).
    """

    async def handler(payload: bytes, peer: str) -> bytes | None:
        return (await intake.receive(payload, peer)).reply

    async def on_oversize(frame: Frame, peer: str) -> bytes | None:
        size = frame.size if frame.size is not None else len(frame.payload)
        outcome = await intake.oversize(frame.payload, peer, size=size, sha256=frame.sha256)
        return outcome.reply

    return MllpServer(
        host,
        port,
        handler,
        max_bytes=max_bytes,
        name=name,
        on_oversize=on_oversize,
        on_connections=on_connections,
        tls=tls,
        admit=admit,
        max_connections=max_connections,
        idle_timeout_s=idle_timeout_s,
        read_timeout_s=read_timeout_s,
        on_refused=on_refused,
    )


class Listeners:
    """The MLLP servers of a configuration's enabled inbound ``mllp`` adapters, one journal.

    Args:
        config: the loaded configuration (``broker.config.load_config``); its mappings are
            reloaded off the event loop that answers ACKs from now on.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.settings
        self.adapters = config.inbound("mllp")
        config.watch()
        self.servers: list[MllpServer] = []
        self.client: redis.asyncio.Redis | None = None
        self.kicker: AsyncKicker | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._peers_changed = asyncio.Event()
        self._refusals: Counter[tuple[str, str]] = Counter()
        """Connections refused since the last beat, by (adapter, reason)."""

    def _refused(self, adapter: str) -> Callable[[str], None]:
        """Count a refused connection of ``adapter``; the next beat (soon) writes it."""

        def count(reason: str) -> None:
            self._refusals[(adapter, reason)] += 1
            self._peers_changed.set()

        return count

    async def start(self) -> None:
        """Bind every listener; raises OSError when an address is taken."""
        offload.configure(self.settings.parse_processes)
        self.client = redis.asyncio.Redis.from_url(self.settings.effective_redis_url)
        # The mapping watcher's thread sends its reloads to the audit trail: a synchronous client.
        audit_sink.configure(redis.Redis.from_url(self.settings.effective_redis_url))
        journal = Journal(
            self.client,
            self.settings.dedupe_window_s,
            rejected_head_bytes=self.settings.rejected_head_bytes,
        )
        kicker = self.kicker = AsyncKicker(create_celery(self.settings), self.client)
        for adapter in self.adapters:
            host, port = adapter.host_port
            intake = HL7v2Intake(
                adapter, journal, self.config.supports, self.settings.partitions, kicker
            )
            server = mllp_server(
                host,
                port,
                intake,
                max_bytes=self.settings.max_message_bytes,
                name=adapter.id,
                on_connections=self._peers_changed.set,
                tls=adapter.tls.server_context() if adapter.tls else None,
                admit=adapter.admits if adapter.allow_from is not None else None,
                max_connections=self.settings.mllp_max_connections,
                idle_timeout_s=self.settings.mllp_idle_timeout_s,
                read_timeout_s=self.settings.mllp_read_timeout_s,
                on_refused=self._refused(adapter.id),
            )
            await server.start()
            self.servers.append(server)
            log.info(
                "listener.started",
                adapter=adapter.id,
                address=f"{host}:{server.port}",
                tls=adapter.tls is not None,
                allow_from=adapter.allow_from,
            )
        await self._beat()
        self._heartbeat = asyncio.create_task(self._beating())

    async def _beat(self) -> None:
        """Mark every running server and its connected peers in Redis for three housekeeping
        periods."""
        if self.client is None:
            return
        ttl = max(1, int(self.settings.rekick_interval_s * 3))
        pipe = self.client.pipeline(transaction=False)
        for adapter, server in zip(self.adapters, self.servers, strict=False):
            pipe.set(keys.listening(adapter.id), f"{adapter.host_port[0]}:{server.port}", ex=ttl)
            pipe.set(keys.peers(adapter.id), server.connections, ex=ttl)
        await self._write_refusals(pipe)

    async def _write_refusals(self, pipe: Any) -> None:
        """Add the connections refused since the last write to ``pipe`` and run it."""
        refusals, self._refusals = self._refusals, Counter()
        for (adapter_id, reason), count in refusals.items():
            pipe.hincrby(
                keys.adapter_stats(adapter_id), f"{keys.CONNECTION_REFUSED}{reason}", count
            )
        try:
            await pipe.execute()
        except redis.RedisError:
            self._refusals.update(refusals)  # counted at the next write
            raise

    async def _beating(self) -> None:
        """Beat every housekeeping period, and soon after peers connect or leave."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
            # comes as the event is set (a peer leaving as SIGTERM arrives), and stop() hangs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.rekick_interval_s):
                    await self._peers_changed.wait()
                await asyncio.sleep(_SETTLE_S)
            self._peers_changed.clear()
            try:
                await self._beat()
            except redis.RedisError as exc:  # Redis away for a moment: the next beat retries
                log.warning("listener.heartbeat_failed", error=type(exc).__name__)

    async def stop(self) -> None:
        """Stop accepting, let in-flight messages finish (journal + ACK), close connections."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for server in self.servers:
            await server.stop()
        if self.kicker is not None:
            await self.kicker.settle()  # the drains the last messages kicked are queued
        if self.client is not None and self._refusals:
            with contextlib.suppress(redis.RedisError):
                await self._write_refusals(self.client.pipeline(transaction=False))
        if self.client is not None and self.adapters:
            gone = [key(a.id) for a in self.adapters for key in (keys.listening, keys.peers)]
            await self.client.delete(*gone)
            await self.client.aclose()
        offload.shutdown()
        log.info("listener.stopped", adapters=len(self.servers))


async def _serve(settings: Settings) -> None:
    listeners = Listeners(load_config(settings))
    offload.configure(settings.parse_processes)
    offload.start()
    await listeners.start()
    tune_gc()  # what it loaded for its life stays out of every collection (broker.gctuning)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await listeners.stop()


def run_listeners(settings: Settings) -> None:
    """Run the listeners until SIGINT or SIGTERM.

    Raises:
        ConfigurationError: the configuration does not load or is refused (``load_config``).
    """
    asyncio.run(_serve(settings))
