"""structlog set-up: JSON lines in production, console in development, patient data redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["bind", "configure_logging", "get_logger", "redact_phi"]

PHI_KEYS = frozenset(
    {"payload", "raw", "body", "name", "family", "given", "cin", "birth_date", "value"}
)
"""Event keys that may carry message content; dropped at info level and above."""
_REDACTED = "[redacted]"


def redact_phi(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace payload-bearing keys by a marker unless the event is at debug level."""
    if method_name != "debug":
        for key in PHI_KEYS.intersection(event_dict):
            event_dict[key] = _REDACTED
    return event_dict


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Configure structlog (and the stdlib root logger) once per process.

    Args:
        fmt: ``json`` for one JSON object per line, ``console`` for humans.
        level: the minimum level name.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_phi,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s", force=True)
    # Per-request and per-task lines from libraries drown the broker's own canonical lines.
    for noisy in ("httpx", "httpcore", "celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str | None = None) -> Any:
    """Return a structlog logger, optionally named after its module."""
    return structlog.get_logger(name) if name else structlog.get_logger()


def bind(**context: Any) -> None:
    """Bind ``envelope_id``, ``correlation_id``, ``adapter`` … for the current task or request."""
    structlog.contextvars.bind_contextvars(**context)
