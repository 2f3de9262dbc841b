"""What operators look at and what keeps the streams tidy: health, statistics, housekeeping."""

from broker.ops.backlog import queues
from broker.ops.health import Readiness, check_redis, readiness
from broker.ops.housekeeping import pressure, rekick, trim
from broker.ops.metrics import QueueCollector, prometheus_text
from broker.ops.rates import Flow, Sample, record
from broker.ops.stats import GroupStats, Snapshot, counters, group_stats, snapshot

__all__ = [
    "Flow",
    "GroupStats",
    "QueueCollector",
    "Readiness",
    "Sample",
    "Snapshot",
    "check_redis",
    "counters",
    "group_stats",
    "pressure",
    "prometheus_text",
    "queues",
    "readiness",
    "record",
    "rekick",
    "snapshot",
    "trim",
]
