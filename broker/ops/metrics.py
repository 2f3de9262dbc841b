"""``/metrics``: a prometheus_client collector that reads Redis when Prometheus scrapes.

Nothing is counted in the process that serves the scrape: every figure is read from Redis
(:func:`broker.ops.stats.snapshot`, the samples of :mod:`broker.ops.rates`), so any API process
gives the same answer and the figures survive restarts.

Series:

- ``passerelle_<name>_total`` (counter): each counter ``name`` of ``pl:stats``; ``name:SUB``
  has the label ``subscriber="SUB"``. ``queued``, ``delivered``, ``retried`` and
  ``dead_lettered`` are there for every subscriber with a queue, 0 until they count.
- ``passerelle_stream_length{stream}``; ``passerelle_group_lag``, ``_pending``, ``_depth`` and
  ``_oldest_age_seconds`` ``{stream, group}``: every journal and subscriber stream.
- ``passerelle_pipeline_*`` and ``passerelle_subscriber_*{subscriber}``: ``backlog``,
  ``offered_per_second``, ``sustained_per_second``, ``backlog_growth_per_second`` and
  ``seconds_to_backpressure`` (``+Inf`` when the backlog is not growing); subscribers also
  ``parked``. A rate is left out while fewer than two samples cover the last minute.
- ``passerelle_redis_memory_used_bytes``, ``_limit_bytes``, ``_growth_bytes_per_second``;
  ``passerelle_backpressure`` (1 while the listeners refuse new messages).
- ``passerelle_adapter_received_total{adapter}``, ``passerelle_adapter_refused_total{adapter,
  code}`` (the ACK code or HTTP status) and ``passerelle_adapter_mapping_failed_total{adapter}``
  (quarantined by parse, mapping or validation), ``passerelle_adapter_connections_refused_total
  {adapter, reason}`` (``not_allowed`` by ``allow_from``, ``connection_cap``, ``tls_handshake``:
  refused before a message was read): per inbound adapter (``pl:adapter:SRC``).
- ``passerelle_subscriber_oldest_age_seconds{subscriber}`` (the oldest undelivered message of
  any of its partitions), ``passerelle_subscriber_dead_letters_open{subscriber}`` (from the open
  index ``pl:dlopen:SUB``: no record is read) and the histogram
  ``passerelle_delivery_latency_seconds{subscriber}`` (received → delivered, ``pl:latency:SUB``).
- ``passerelle_listener_up{adapter}``: 1 while an inbound MLLP adapter's listener is up: its
  process's heartbeat is in Redis, or its address accepts a TCP connection from here (probed at
  the scrape, when the collector is given the listeners).

docs/operations.md ("Metrics and alerts") lists every series with its meaning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from broker import keys, latency
from broker.ops.overview import inbound_figures
from broker.ops.rates import Flow, Sample, history, journal_flow, memory_growth, subscriber_flow
from broker.ops.stats import Snapshot, snapshot
from broker.settings import Settings

__all__ = ["CONTENT_TYPE", "QueueCollector", "adapters_seen", "prometheus_text"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What :func:`prometheus_text` writes: the Prometheus text format 0.0.4."""

_GROUP_FIELDS = (
    ("lag", "Entries not yet delivered to the consumer group."),
    ("pending", "Entries delivered to the group and not acknowledged."),
    ("depth", "Work left for the group: lag plus pending."),
    ("oldest_age_seconds", "Age of the oldest entry waiting for the group."),
)
_FLOW_FIELDS = (
    ("offered_per_second", "offered_per_s", "Messages arriving per second over the last minute."),
    (
        "sustained_per_second",
        "sustained_per_s",
        "Messages the broker finished per second over the last minute.",
    ),
    (
        "backlog_growth_per_second",
        "growth_per_s",
        "Growth of the backlog, messages per second; positive means falling behind.",
    ),
)


def _metric_name(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in text.lower())
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"


def _eta(flow: Flow) -> float | None:
    """Seconds to backpressure for a gauge: +Inf when not growing, None when unknown."""
    if flow.seconds_to_backpressure is not None:
        return flow.seconds_to_backpressure
    return None if flow.growth_per_s is None else math.inf


class QueueCollector:
    """A prometheus_client collector of the broker's counters, queues and flows.

    Args:
        client: the broker's Redis.
        settings: ``partitions`` and the backpressure limits.
        clock: the current time in epoch seconds (tests fix it).
        listeners: probes the inbound MLLP listeners (:func:`broker.ops.processes.listeners`:
            ``adapter`` and ``accepting`` each); ``None``: no ``passerelle_listener_up``.
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        listeners: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        self.listeners = listeners

    def collect(self) -> Iterator[Metric]:
        """Read Redis and yield every metric family (called at each scrape)."""
        snap = snapshot(self.client, self.settings.partitions, now=self.clock())
        samples = [s for s in history(self.client) if s.at < snap.at]
        yield from _counters(snap)
        yield from _streams(snap)
        yield from self._flows(snap, [*samples, Sample.of(snap)])
        yield from _adapters(self.client)
        yield from _subscribers(self.client, snap)
        if self.listeners is not None:
            up = GaugeMetricFamily(
                "passerelle_listener_up",
                "1 while the inbound MLLP adapter's listener is up (heartbeat or accepting), else 0.",
                labels=["adapter"],
            )
            for probe in self.listeners():
                up.add_metric([probe["adapter"]], 1 if probe["accepting"] else 0)
            yield up

    def _flows(self, snap: Snapshot, points: list[Sample]) -> Iterator[Metric]:
        pipeline = journal_flow(points, max_memory_ratio=self.settings.max_memory_ratio)
        flows = {
            sub: subscriber_flow(points, sub, max_backlog=self.settings.max_backlog)
            for sub in snap.outbound
        }
        for scope, labels in (("pipeline", []), ("subscriber", ["subscriber"])):
            per: dict[tuple[str, ...], Flow] = (
                {(): pipeline} if scope == "pipeline" else {(s,): f for s, f in flows.items()}
            )
            prefix = f"passerelle_{scope}_"
            backlog = GaugeMetricFamily(
                prefix + "backlog", "Messages waiting: undelivered plus pending.", labels=labels
            )
            for values, flow in per.items():
                backlog.add_metric(values, flow.backlog)
            yield backlog
            if scope == "subscriber":
                parked = GaugeMetricFamily(
                    prefix + "parked", "Messages parked behind dead letters.", labels=labels
                )
                for values, flow in per.items():
                    parked.add_metric(values, flow.parked)
                yield parked
            for name, attribute, help_text in _FLOW_FIELDS:
                family = GaugeMetricFamily(prefix + name, help_text, labels=labels)
                for values, flow in per.items():
                    value = getattr(flow, attribute)
                    if value is not None:
                        family.add_metric(values, value)
                yield family
            eta = GaugeMetricFamily(
                prefix + "seconds_to_backpressure",
                "At the current growth, seconds until backpressure turns on (+Inf: never).",
                labels=labels,
            )
            for values, flow in per.items():
                if (seconds := _eta(flow)) is not None:
                    eta.add_metric(values, seconds)
            yield eta
        yield GaugeMetricFamily(
            "passerelle_redis_memory_used_bytes", "Redis used_memory.", value=snap.memory_used
        )
        yield GaugeMetricFamily(
            "passerelle_redis_memory_limit_bytes",
            "Redis maxmemory (0: unlimited).",
            value=snap.memory_limit,
        )
        growth = GaugeMetricFamily(
            "passerelle_redis_memory_growth_bytes_per_second",
            "Growth of Redis used_memory over the last minute.",
        )
        if (bytes_per_s := memory_growth(points)) is not None:
            growth.add_metric([], bytes_per_s)
        yield growth
        yield GaugeMetricFamily(
            "passerelle_backpressure",
            "1 while the listeners refuse new messages (pl:pressure), else 0.",
            value=0 if snap.pressure is None else 1,
        )


_PER_SUBSCRIBER = ("queued", "delivered", "retried", "dead_lettered")
"""Counters every known subscriber exports, at 0 before their first increment: a series that
appears only at its first retry would hide that retry from ``increase()``."""


def _counters(snap: Snapshot) -> Iterator[Metric]:
    """``pl:stats`` counters: ``name`` and ``name:SUB`` share ``passerelle_<name>_total``."""
    families: dict[str, Metric] = {}
    counters = dict(snap.counters)
    for sub in {*snap.outbound, *snap.dead_letters}:
        for base in _PER_SUBSCRIBER:
            counters.setdefault(f"{base}:{sub}", 0)
    for name, value in sorted(counters.items()):
        base, sep, subscriber = name.partition(":")
        metric = f"passerelle_{_metric_name(base)}"
        family = families.setdefault(
            metric, Metric(metric, "Counter from the pl:stats hash.", "counter")
        )
        family.add_sample(metric + "_total", {"subscriber": subscriber} if sep else {}, value)
    yield from families.values()


def _streams(snap: Snapshot) -> Iterator[Metric]:
    """Stream lengths and every consumer group's lag, pending, depth and oldest age."""
    groups = list(snap.inbound.values())
    for partitions in snap.outbound.values():
        groups.extend(partitions.values())
    lengths = GaugeMetricFamily(
        "passerelle_stream_length", "Entries in the stream, processed or not.", labels=["stream"]
    )
    for g in groups:
        lengths.add_metric([g.stream], g.length)
    lengths.add_metric([keys.REJECTED], snap.rejected)
    lengths.add_metric([keys.QUARANTINE], snap.quarantine)
    for subscriber, count in snap.dead_letters.items():
        lengths.add_metric([keys.dead(subscriber)], count)
    yield lengths
    for field_name, help_text in _GROUP_FIELDS:
        family = GaugeMetricFamily(
            f"passerelle_group_{field_name}", help_text, labels=["stream", "group"]
        )
        for g in groups:
            value = g.oldest_age_s if field_name == "oldest_age_seconds" else getattr(g, field_name)
            family.add_metric([g.stream, g.group], 0 if value is None else value)
        yield family


def _adapters(client: redis.Redis) -> Iterator[Metric]:
    """Per inbound adapter: received, refused per code, quarantined (``pl:adapter:SRC``)."""
    received = CounterMetricFamily(
        "passerelle_adapter_received",
        "Messages the inbound adapter journalled (duplicates excluded).",
        labels=["adapter"],
    )
    refused = CounterMetricFamily(
        "passerelle_adapter_refused",
        "Messages the inbound adapter refused, by ACK code (AE, AR) or HTTP status.",
        labels=["adapter", "code"],
    )
    failed = CounterMetricFamily(
        "passerelle_adapter_mapping_failed",
        "Messages of the adapter quarantined by the pipeline (parse, mapping or validation).",
        labels=["adapter"],
    )
    connections = CounterMetricFamily(
        "passerelle_adapter_connections_refused",
        "Connections the inbound adapter refused before reading a message, by reason: "
        "not_allowed (allow_from), connection_cap, tls_handshake.",
        labels=["adapter", "reason"],
    )
    for adapter in adapters_seen(client):
        figures = inbound_figures(client, adapter)
        received.add_metric([adapter], figures["received"])
        for code, count in figures["refused"].items():
            refused.add_metric([adapter, code], count)
        stats: Any = client.hgetall(keys.adapter_stats(adapter))
        fields = {_text(k): v for k, v in stats.items()}
        failed.add_metric([adapter], int(fields.get("failed") or 0))
        for name, count in sorted(fields.items()):
            if name.startswith(keys.CONNECTION_REFUSED):
                reason = name.removeprefix(keys.CONNECTION_REFUSED)
                connections.add_metric([adapter, reason], int(count))
    yield from (received, refused, failed, connections)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def adapters_seen(client: redis.Redis) -> list[str]:
    """Inbound adapters with counters (``pl:adapter:SRC``), sorted."""
    prefix = keys.adapter_stats("")
    found = (
        k.decode() if isinstance(k, bytes) else str(k)
        for k in client.scan_iter(match=f"{prefix}*", count=1_000)
    )
    return sorted(k.removeprefix(prefix) for k in found)


def _subscribers(client: redis.Redis, snap: Snapshot) -> Iterator[Metric]:
    """Per subscriber: oldest undelivered age, open dead letters, the latency histogram."""
    subscribers = sorted({*snap.outbound, *snap.dead_letters})
    oldest = GaugeMetricFamily(
        "passerelle_subscriber_oldest_age_seconds",
        "Age of the oldest message queued for the subscriber and not delivered (0: none).",
        labels=["subscriber"],
    )
    for sub in subscribers:
        ages = [g.oldest_age_s for g in snap.outbound.get(sub, {}).values()]
        oldest.add_metric([sub], max((a for a in ages if a is not None), default=0))
    yield oldest
    pipe = client.pipeline(transaction=False)
    for sub in subscribers:
        pipe.scard(keys.dead_open(sub))
    dead_open = GaugeMetricFamily(
        "passerelle_subscriber_dead_letters_open",
        "Dead letters of the subscriber not yet replayed or discarded.",
        labels=["subscriber"],
    )
    for sub, count in zip(subscribers, pipe.execute(), strict=True):
        dead_open.add_metric([sub], int(count))
    yield dead_open
    histogram = HistogramMetricFamily(
        "passerelle_delivery_latency_seconds",
        "End-to-end latency: received by Passerelle to confirmed by the subscriber.",
        labels=["subscriber"],
    )
    for sub, h in latency.read(client, subscribers).items():
        buckets = [("+Inf" if math.isinf(b) else str(b), n) for b, n in h.buckets]
        histogram.add_metric([sub], buckets, h.sum)
    yield histogram


def prometheus_text(
    client: redis.Redis,
    settings: Settings,
    *,
    now: float | None = None,
    listeners: Callable[[], list[dict[str, Any]]] | None = None,
) -> str:
    """The Prometheus text exposition (format 0.0.4) of :class:`QueueCollector`.

    Args:
        client: the broker's Redis.
        settings: ``partitions`` and the backpressure limits.
        now: the current time in epoch seconds (for tests).
        listeners: probes the inbound MLLP listeners (see :class:`QueueCollector`).
    """
    clock = time.time if now is None else (lambda: now)
    collector = QueueCollector(client, settings, clock=clock, listeners=listeners)
    return generate_latest(collector).decode()
