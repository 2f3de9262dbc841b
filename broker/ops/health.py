"""Liveness and readiness checks as plain functions, for the API and the CLI."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

__all__ = ["Readiness", "check_redis", "readiness"]


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether the process can do its work, and each check's verdict.

    Attributes:
        ready: every check passed.
        checks: check name → ``ok`` or a sentence saying what failed (no secrets, no data).
        redis_latency_ms: the PING round trip, when Redis answered.
    """

    ready: bool
    checks: dict[str, str] = field(default_factory=dict)
    redis_latency_ms: float | None = None


def check_redis(client: redis.Redis) -> tuple[bool, str, float | None]:
    """PING Redis once: (answered, ``ok`` or why not, round trip in ms)."""
    start = time.perf_counter()
    try:
        answered = bool(client.ping())
    except redis.RedisError as exc:
        # The exception class says enough (connection refused, timeout); its text may hold
        # the URL, which can carry a password.
        return False, f"Redis did not answer PING ({exc.__class__.__name__})", None
    latency = round((time.perf_counter() - start) * 1000, 3)
    return answered, "ok" if answered else "Redis answered PING with a failure", latency


def readiness(client: redis.Redis) -> Readiness:
    """Run every readiness check: for now, that Redis answers PING."""
    ok, verdict, latency = check_redis(client)
    return Readiness(ready=ok, checks={"redis": verdict}, redis_latency_ms=latency)
