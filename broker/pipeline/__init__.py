"""The pipeline: the one place that chains map_message (parse, map, check) → route for a
journalled message."""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from broker.adapters.spec import AdapterSpec
from broker.envelope import Envelope, MessageState
from broker.errors import MappingError, MessageError
from broker.log import get_logger
from broker.mapping import DROPPED, MappingSet, MapResult, map_message, tally_key
from broker.routing import route

__all__ = ["DROPPED_PREFIX", "dropped_tally", "envelope_from_journal", "process"]

DROPPED_PREFIX = "dropped|"
"""Prefix of the dropped-segment counters in an adapter's unmapped tally (``pl:unmapped:ID``)."""

log = get_logger(__name__)


def envelope_from_journal(
    entry_id: str, fields: Mapping[bytes, bytes], partition: int | None = None
) -> Envelope:
    """Rebuild the RECEIVED envelope the edge journalled (without the raw bytes), read from
    journal partition ``partition``."""
    fhir = fields.get(b"content_type") == b"application/fhir+json"
    return Envelope(
        id=fields[b"id"].decode(),
        source=fields[b"source"].decode(),
        content_type="application/fhir+json" if fhir else "application/hl7-v2",
        received_at=datetime.fromisoformat(fields[b"received_at"].decode()),
        journal_id=entry_id,
        partition=partition,
    )


def process(
    envelope: Envelope,
    raw: bytes,
    mappings: MappingSet,
    adapters: Mapping[str, AdapterSpec],
    subscribers: Sequence[AdapterSpec],
) -> tuple[Envelope, list[AdapterSpec]]:
    """Run one message through parse → map → route.

    A malformed segment group the mapping dropped (docs/mappings.md, "Malformed segments") is a
    ``segment-dropped`` finding on the routed envelope; when the source adapter's
    ``on_invalid_segment`` is ``quarantine``, it makes the whole message FAILED instead.

    Returns:
        The envelope in its new state (ROUTED, FILTERED or FAILED with a reason) and the
        subscribers it must be delivered to. Never raises for a bad message.
    """
    source = adapters.get(envelope.source)
    try:
        result = map_message(
            raw,
            mappings,
            source=envelope.source,
            envelope_id=envelope.id,
            received_at=envelope.received_at,
            content_type=envelope.content_type,
            settings=source,
        )
    except MessageError as exc:
        failed = envelope.model_copy(update={"state": MessageState.FAILED, "reason": _reason(exc)})
        return failed, []
    except Exception as exc:
        # A bug must cost one quarantined message, never a worker or the partition behind it.
        # Logged by type and code location only: an exception's message or a traceback's
        # locals may quote the patient's data.
        log.error(
            "pipeline.internal_error",
            envelope_id=envelope.id,
            adapter=envelope.source,
            error=type(exc).__name__,
            at=_frames(exc),
        )
        reason = (
            f"internal error while parsing or mapping ({type(exc).__name__}); see the worker log"
        )
        return envelope.model_copy(update={"state": MessageState.FAILED, "reason": reason}), []
    # One copy for the message's facts and its outcome together (a copy costs about 2 µs).
    update = _facts(result)
    if result.refused is not None:
        update.update(state=MessageState.FAILED, reason=result.refused, findings=result.findings)
        return envelope.model_copy(update=update), []
    return _route(envelope, update, result, subscribers)


def _facts(result: MapResult) -> dict[str, Any]:
    """What the envelope records of the message itself: event, version, control id..."""
    facts = {
        "event": result.event,
        "version": result.version,
        "correlation_id": result.correlation_id,
    }
    if result.control_id is not None:
        facts["control_id"] = result.control_id
    if result.sender is not None:
        facts["sender"] = result.sender
    return facts


def _log_dropped(envelope: Envelope, result: MapResult) -> None:
    """Log the segment groups the mapping dropped: structural locations and rule names only."""
    dropped = [f for f in result.findings if f.code == DROPPED]
    if dropped:
        log.warning(
            "message.segments_dropped",
            envelope_id=envelope.id,
            control_id=envelope.control_id,
            adapter=envelope.source,
            dropped=[f"{f.location} {f.rule}" for f in dropped],
        )


def dropped_tally(envelope: Envelope) -> list[str]:
    """The unmapped-report counters of an envelope's dropped segment groups (``dropped|...``).

    One per ``segment-dropped`` finding, by its location without instance numbers and the rule
    that failed (``dropped|PATIENT_RESULT/ORDER_OBSERVATION/OBSERVATION/OBX|Observation.code``):
    bounded like the unmapped fields, read back by ``GET /api/unmapped/{adapter}``.
    """
    return [f"{DROPPED_PREFIX}{tally_key(f)}" for f in envelope.findings if f.code == DROPPED]


def _reason(exc: MessageError) -> str:
    """The quarantine reason: the error's one line, naming for a MappingError the mapping file,
    the rule and the source path when its message does not already."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not isinstance(exc, MappingError):
        return reason
    missing = [
        f"{label} {value}"
        for label, value in (
            ("mapping", exc.mapping),
            ("rule", exc.rule),
            ("source path", exc.source_path),
        )
        if value and value not in reason
    ]
    return f"{reason} ({', '.join(missing)})" if missing else reason


def _frames(exc: BaseException) -> list[str]:
    """``file:line in function`` of each frame of the traceback, innermost last; no values."""
    return [
        f"{frame.filename}:{frame.lineno} in {frame.name}"
        for frame in traceback.extract_tb(exc.__traceback__)
    ]


def _route(
    envelope: Envelope,
    facts: dict[str, Any],
    result: MapResult,
    subscribers: Sequence[AdapterSpec],
) -> tuple[Envelope, list[AdapterSpec]]:
    """The mapped envelope, ROUTED to its subscribers or FILTERED when none wants it."""
    routed = envelope.model_copy(
        update={
            **facts,
            "bundle": result.bundle,
            "findings": result.findings,
            "mappings": result.mappings,
            "partition_key": result.partition_key,
            "unmapped": result.unmapped,
            "state": MessageState.ROUTED,
        }
    )
    _log_dropped(routed, result)
    destinations = route(routed, subscribers)  # reads the event and the source only
    if destinations:
        return routed, destinations
    return routed.model_copy(update={"state": MessageState.FILTERED}), destinations
