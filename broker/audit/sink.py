"""The process's way into the trail where no pipeline is at hand: hooks that must never fail.

Logins (``broker.access_events``) and mapping reloads (``broker.mapping.reload``) happen deep in
code that holds no Redis client of its own; the process's entry point hands one to
``configure`` once (the API, the workers, the listeners), and ``send`` uses it. An event that
cannot be sent is logged as ``audit.lost`` (with the action, never its data), not raised: a
login or a reload must not fail because the trail's stream is unreachable. A process whose entry
point configured nothing (an offline tool, a test) sends nothing.
"""

from __future__ import annotations

from typing import Any

import redis

from broker.audit.events import record
from broker.log import get_logger

__all__ = ["configure", "send"]

log = get_logger(__name__)
_client: redis.Redis | None = None


def configure(client: redis.Redis | None) -> None:
    """Use ``client`` (a synchronous client on the broker's Redis) from now on."""
    global _client  # one client per process, set by its entry point
    _client = client


def send(
    action: str,
    *,
    who: str,
    why: str = "",
    details: dict[str, Any] | None = None,
    **targets: Any,
) -> bool:
    """Send one audit event; ``False`` (and an ``audit.lost`` log line) when it cannot be."""
    if _client is None:  # not a serving process (a test, an offline tool): nothing to record
        log.debug("audit.unsent", action=action)
        return False
    try:
        record(_client, action, who=who, why=why, details=details, **targets)
    except redis.RedisError as exc:
        log.error("audit.lost", action=action, error=type(exc).__name__)
        return False
    return True
