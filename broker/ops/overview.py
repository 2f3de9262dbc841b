"""The operator's overview: every inbound adapter and subscriber at a glance, now.

The one overview of the running system: ``GET /api/overview`` returns it, the console's
overview page polls it and ``passerelle status`` renders it (``status --json`` prints it). No
figure of it is computed anywhere else. The queues come from :func:`broker.ops.backlog.queues`
(the same figures as ``GET /api/queues``), to which this adds what an operator asks first:

- per inbound adapter: its transport, how many messages it received and refused (per ACK code
  or HTTP status) and when it last saw one (the ``pl:adapter:SRC`` counters the journal's
  append keeps), whether its listener accepts connections (:mod:`broker.ops.processes`;
  an inbound HTTP adapter is a route of the API, so its listener is the API's address) and, for
  an MLLP adapter, how many peers hold a connection to it (``pl:peers:SRC``, which the listener
  process publishes with its heartbeat: :mod:`broker.listen`);
- per subscriber: its backlog *including* the messages parked behind its dead letters, how many
  dead letters are open, how many of its partitions wait out a retry back-off and when the
  next retry is due, and its p50/p95/p99 end-to-end latency (from the ``pl:latency:SUB``
  histogram, :func:`broker.latency.percentiles`, as Prometheus's ``histogram_quantile`` reads
  it);
- Redis answering, the Celery workers answering a ping, and the mappings in force.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from broker import keys, latency
from broker.mapping.reload import RejectedReload
from broker.ops.backlog import queues
from broker.ops.health import readiness
from broker.ops.processes import listeners
from broker.ops.stats import subscribers as found_subscribers
from broker.settings import Settings

if TYPE_CHECKING:
    from broker.adapters.spec import AdapterSpec
    from broker.mapping.loader import MappingSet
    from broker.ops.processes import WorkerPing

__all__ = [
    "api_address",
    "dead_letter_counts",
    "inbound_figures",
    "mapping_refs",
    "overview",
    "peers",
    "retrying",
]

_ADAPTER_PREFIX = "pl:adapter:"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def api_address(settings: Settings) -> tuple[str, int]:
    """Where the API (and so every inbound HTTP adapter) listens: ``http_host:http_port``."""
    return settings.http_host, settings.http_port


def mapping_refs(mappings: MappingSet) -> list[str]:
    """The mapping set in force as ``id@sha256-prefix``, one per mapping file."""
    return [f"{ref.id}@{ref.sha256[:12]}" for ref in mappings.refs]


def inbound_figures(client: redis.Redis, adapter: str) -> dict[str, Any]:
    """One inbound adapter's counters: received, refused per code, last message (epoch s)."""
    raw: Any = client.hgetall(keys.adapter_stats(adapter))
    fields = {_text(k): _text(v) for k, v in raw.items()}
    refused = {
        name.removeprefix("refused:"): int(value)
        for name, value in sorted(fields.items())
        if name.startswith("refused:")
    }
    last_ms = fields.get("last_ms")
    return {
        "id": adapter,
        "received": int(fields.get("received", 0)),
        "refused": refused,
        "refused_total": sum(refused.values()),
        "last_message_at": int(last_ms) / 1000 if last_ms else None,
    }


def dead_letter_counts(client: redis.Redis, subscriber: str) -> tuple[int, int]:
    """The subscriber's dead letters: (still open, in all); replayed, delivered and discarded
    ones are kept, with their status, until the retention trims them. Read from the open index
    (``pl:dlopen:SUB``) and the record hash's length: no record is read."""
    pipe = client.pipeline(transaction=False)
    pipe.scard(keys.dead_open(subscriber))
    pipe.hlen(keys.dead_records(subscriber))
    opened, total = pipe.execute()
    return int(opened), int(total)


def retrying(
    client: redis.Redis, subscriber: str, partitions: int, now: float
) -> tuple[int, float | None]:
    """The subscriber's partitions waiting out a retry back-off (their ``pl:hold:SUB:P`` mark
    lies ahead), and in how many seconds the first of them retries (``None``: none waits)."""
    marks: Any = client.mget([keys.hold(subscriber, p) for p in range(partitions)])
    waits = [float(mark) - now for mark in marks if mark is not None and float(mark) > now]
    return len(waits), (round(min(waits), 1) if waits else None)


def peers(client: redis.Redis, sources: Sequence[str]) -> dict[str, int | None]:
    """How many peers hold a connection to each MLLP listener of ``sources``, as its process last
    published (``None``: no listener process heard from)."""
    if not sources:
        return {}
    counts: Any = client.mget([keys.peers(source) for source in sources])
    return {
        source: None if count is None else int(count)
        for source, count in zip(sources, counts, strict=True)
    }


def _adapters_seen(client: redis.Redis) -> list[str]:
    return sorted(
        _text(k).removeprefix(_ADAPTER_PREFIX)
        for k in client.scan_iter(match=f"{_ADAPTER_PREFIX}*", count=1_000)
    )


def _rejected(reload: RejectedReload | None) -> dict[str, Any] | None:
    if reload is None:
        return None
    return {"at": reload.at, "file": reload.file, "line": reload.line, "reason": reload.reason}


def _listeners(
    client: redis.Redis, sources: Sequence[AdapterSpec], api: tuple[str, int] | None
) -> list[dict[str, Any]]:
    """Each enabled inbound adapter's listener, probed once: its heartbeat in Redis, or it
    accepts a connection (an MLLP adapter's own address, an HTTP adapter's the API's; not listed
    when ``api`` is ``None``), as ``/metrics`` and the alerts say."""
    addresses: list[tuple[str, str, int]] = []
    for source in sources:
        if not source.enabled:
            continue
        if source.transport == "mllp":
            addresses.append((source.id, *source.host_port))
        elif source.transport == "http" and api is not None:
            addresses.append((source.id, *api))
    return listeners(addresses, client)


def overview(
    client: redis.Redis,
    settings: Settings,
    *,
    adapters: Sequence[AdapterSpec] = (),
    mappings: Sequence[str] = (),
    rejected_reload: RejectedReload | None = None,
    workers: WorkerPing | None = None,
    api: tuple[str, int] | None = None,
    probe: bool = True,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything the overview shows, read now.

    Args:
        client: the broker's Redis.
        settings: ``partitions`` and the backpressure limits.
        adapters: the registrations; the inbound ones are listed first, then adapters that
            received messages and are no longer registered; likewise the subscribers.
        mappings: the mapping set in force, as ``id@sha256-prefix`` (:func:`mapping_refs`).
        rejected_reload: the last refused reload of the mappings, if any.
        workers: the Celery worker ping (answers cached by it); ``None``: not asked.
        api: the API's address, the listener of every inbound HTTP adapter
            (:func:`api_address`); ``None``: those listeners are not probed.
        probe: knock on the listeners' ports; ``False`` for no ``processes.listeners`` and
            ``listener_up`` ``None`` everywhere.
        now: the current time in epoch seconds (for tests).

    Returns:
        ``{"at", "redis": {"ready", "latency_ms"}, "received", "inbound": [...],
        "subscribers": [...], "pipeline": {...}, "rejected", "quarantine", "backpressure",
        "memory", "mappings": {"in_force", "rejected_reload"}, "processes": {"listeners",
        "workers"}}``; times are epoch seconds. Each inbound adapter has ``transport``,
        ``enabled``, ``registered``, ``received``, ``refused`` (per code), ``refused_total``,
        ``last_message_at``, ``listener_up`` (``None``: not probed) and ``peers`` (the peers
        connected to an MLLP listener; ``None`` for HTTP or when no listener process beats).
        Each subscriber has ``backlog`` (``depth`` + ``parked``), ``depth``, ``parked``,
        ``oldest_age_s``, ``delivered``, ``dead_letters_open``, ``retrying`` (partitions
        waiting for a retry), ``next_retry_in_s``, ``flow`` and ``latency_s`` (``{"p50",
        "p95", "p99", "count"}`` in seconds; ``None`` before the first delivery).
    """
    now = time.time() if now is None else now
    ready = readiness(client)
    queue = queues(client, settings, now=now)
    specs = {a.id: a for a in adapters}
    registered_subs = [a.id for a in adapters if a.direction == "outbound"]
    registered_sources = [a for a in adapters if a.direction == "inbound"]
    by_id = {s["id"]: s for s in queue["subscribers"]}
    subscriber_ids = list(dict.fromkeys([*registered_subs, *found_subscribers(client), *by_id]))
    histograms = latency.read(client, subscriber_ids)
    subs = []
    for sub in subscriber_ids:
        q = by_id.get(sub, {})
        depth, parked = int(q.get("depth", 0)), int(q.get("parked", 0))
        waiting, next_retry = retrying(client, sub, settings.partitions, now)
        spec = specs.get(sub)
        subs.append(
            {
                "id": sub,
                "registered": sub in registered_subs,
                "transport": spec.transport if spec else None,
                "enabled": spec.enabled if spec else None,
                "backlog": depth + parked,
                "depth": depth,
                "parked": parked,
                "oldest_age_s": q.get("oldest_age_s"),
                "delivered": int(q.get("delivered", 0)),
                "dead_letters_open": dead_letter_counts(client, sub)[0],
                "retrying": waiting,
                "next_retry_in_s": next_retry,
                "flow": q.get("flow"),
                "latency_s": latency.percentiles(histograms.get(sub)),
            }
        )
    probed = _listeners(client, registered_sources, api) if probe else []
    up = {listener["adapter"]: listener["accepting"] for listener in probed}
    source_ids = list(dict.fromkeys([*(a.id for a in registered_sources), *_adapters_seen(client)]))
    connected = peers(client, source_ids)
    inbound = []
    for source in source_ids:
        spec = specs.get(source)
        # An HTTP adapter has requests, not connections: its peers are not counted (None).
        http = spec is not None and spec.transport == "http"
        inbound.append(
            {
                **inbound_figures(client, source),
                "registered": spec is not None,
                "transport": spec.transport if spec else None,
                "enabled": spec.enabled if spec else None,
                "listener_up": up.get(source),
                "peers": None if http else connected[source],
            }
        )
    return {
        "at": now,
        "redis": {"ready": ready.ready, "latency_ms": ready.redis_latency_ms},
        "received": int(queue["counters"].get("received", 0)),
        "inbound": inbound,
        "subscribers": subs,
        "pipeline": queue["pipeline"],
        "rejected": queue["rejected"],
        "quarantine": queue["quarantine"],
        "backpressure": queue["backpressure"],
        "memory": queue["memory"],
        "mappings": {"in_force": list(mappings), "rejected_reload": _rejected(rejected_reload)},
        "processes": {
            "listeners": probed,
            "workers": workers.workers() if workers is not None else None,
        },
    }
