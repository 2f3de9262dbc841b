"""What operators look at and what keeps the streams tidy: health, statistics, housekeeping."""

from broker.ops.health import Readiness, check_redis, readiness
from broker.ops.housekeeping import pressure, rekick, trim
from broker.ops.stats import GroupStats, counters, group_stats, prometheus_text, queues

__all__ = [
    "GroupStats",
    "Readiness",
    "check_redis",
    "counters",
    "group_stats",
    "pressure",
    "prometheus_text",
    "queues",
    "readiness",
    "rekick",
    "trim",
]
