"""What operators look at: health checks and queue statistics."""

from broker.ops.health import Readiness, check_redis, readiness
from broker.ops.stats import GroupStats, counters, group_stats, prometheus_text, queues

__all__ = [
    "GroupStats",
    "Readiness",
    "check_redis",
    "counters",
    "group_stats",
    "prometheus_text",
    "queues",
    "readiness",
]
