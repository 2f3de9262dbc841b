"""structlog set-up: JSON lines in production, console in development, patient data redacted.

Redaction is by allow-list, at every level including debug: an event key not in
``ALLOWED_KEYS`` has its value replaced by ``[redacted]``, so a new log call that passes a
message, a name or a body prints nothing of it until someone decides the key is safe and adds
it here. An exception attached to an event (``log.exception``) is logged as its class and the
places it went through, never its message or a formatted traceback (either may quote data);
records of the standard library (uvicorn, Celery, asyncio) lose their traceback the same way.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["ALLOWED_KEYS", "bind", "configure_logging", "get_logger", "redact_phi"]

ALLOWED_KEYS = frozenset(
    # structlog's own, and what this module adds
    {"event", "level", "timestamp", "logger", "error", "frames"}
    # ids, places and counts: what every event of the broker may carry, never message content
    | {
        "ack_code", "action", "actions", "adapter", "adapters", "address", "allow_from", "after_s",
        "appendfsync", "at", "audit",
        "changed", "key_id", "rejected", "quarantine", "dead_letters",
        "attempt", "attempts", "cap", "channel", "client", "col", "control_id", "correlation_id",
        "dead_letter", "delay_s", "delivered", "destination", "drains", "dropped", "entry",
        "envelope_id", "exit_code", "fhir", "file", "handled", "held", "host", "http", "key",
        "limit", "line", "mappings", "message_type", "messages", "method", "ms", "open",
        "partition", "path", "peer", "permission", "permissions", "pid", "port", "problems", "reason",
        "reasons", "records",
        "request_id", "resource_type", "restarts", "role", "roles", "route", "rule", "seconds",
        "seq_first", "seq_last",
        "size", "skipped", "source", "status", "stream", "subject", "subscriber", "summary",
        "task", "task_id", "tls", "token_id", "unfinished", "url", "user", "version", "who",
    }
)  # fmt: skip
"""Event keys whose values are printed; any other key's value is ``[redacted]``, at every level.
Add a key only when no caller can put message content in it."""
_REDACTED = "[redacted]"
_FRAMES = 8
"""Innermost frames kept (file:line function) of an exception attached to an event."""


def _frames(tb: Any) -> list[str]:
    return [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_tb(tb)[-_FRAMES:]]


def redact_phi(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask every key not in ``ALLOWED_KEYS``; an exception becomes its class and frames."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if exc_info[0] is not None:
            event_dict.setdefault("error", exc_info[0].__name__)
            event_dict["frames"] = _frames(exc_info[2])
    for key in [k for k in event_dict if k not in ALLOWED_KEYS]:
        event_dict[key] = _REDACTED
    return event_dict


class _NoTraceback(logging.Filter):
    """Strip the traceback of a standard-library record (it may quote a payload), keep its
    class and frames; the record's own message is kept (libraries log no content in it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None:
            kind, _, tb = record.exc_info
            record.msg = (
                f"{record.getMessage()} [{kind.__name__} at {' < '.join(_frames(tb)[::-1])}]"
            )
            record.args = None
            record.exc_info = None
            record.exc_text = None
        record.stack_info = None
        return True


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
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s", force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_NoTraceback())
    # Per-request and per-task lines from libraries drown the broker's own canonical lines (and
    # alembic's plugin and context lines are printed at every start of a role that opens the store).
    for noisy in ("httpx", "httpcore", "celery.worker.strategy", "celery.app.trace", "alembic"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str | None = None) -> Any:
    """Return a structlog logger, optionally named after its module."""
    return structlog.get_logger(name) if name else structlog.get_logger()


def bind(**context: Any) -> None:
    """Bind ``envelope_id``, ``correlation_id``, ``adapter`` … for the current task or request."""
    structlog.contextvars.bind_contextvars(**context)
