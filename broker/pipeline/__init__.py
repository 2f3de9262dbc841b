"""The pipeline: the one place that chains parse → map → route for a journalled message."""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from datetime import datetime

from broker.adapters.spec import AdapterSpec
from broker.canonical import check
from broker.envelope import Envelope, MessageState
from broker.errors import MappingError, MessageError
from broker.log import get_logger
from broker.mapping import MapContext, MappingSet, MapResult
from broker.mapping.hl7v2_in.drops import DROPPED, tally_key
from broker.parsing.fhir import read_fhir
from broker.parsing.hl7v2 import decode, parse
from broker.routing import route

__all__ = ["DROPPED_PREFIX", "dropped_tally", "envelope_from_journal", "process"]

DROPPED_PREFIX = "dropped|"
"""Prefix of the dropped-segment counters in an adapter's unmapped tally (``pl:unmapped:ID``)."""

log = get_logger(__name__)


def envelope_from_journal(entry_id: str, fields: Mapping[bytes, bytes]) -> Envelope:
    """Rebuild the RECEIVED envelope the edge journalled (without the raw bytes)."""
    fhir = fields.get(b"content_type") == b"application/fhir+json"
    return Envelope(
        id=fields[b"id"].decode(),
        source=fields[b"source"].decode(),
        content_type="application/fhir+json" if fhir else "application/hl7-v2",
        received_at=datetime.fromisoformat(fields[b"received_at"].decode()),
        journal_id=entry_id,
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
    charset = source.charset if source else "utf-8"
    ctx = MapContext(
        envelope_id=envelope.id,
        source=envelope.source,
        timezone=source.timezone if source else "Africa/Casablanca",
        received_at=envelope.received_at,
        identifier_systems=tuple(source.identifier_systems) if source else (),
    )
    on_invalid = source.on_invalid_segment if source else "drop"
    try:
        if envelope.content_type == "application/fhir+json":
            envelope, result, unmapped = _map_fhir(envelope, raw, mappings, ctx)
        else:
            envelope, result, unmapped = _map_hl7v2(envelope, raw, mappings, charset, ctx)
            refused = _dropped(envelope, result, on_invalid)
            if refused is not None:
                update = {
                    "state": MessageState.FAILED,
                    "reason": refused,
                    "findings": result.findings,
                }
                return envelope.model_copy(update=update), []
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
    return _route(envelope, result, unmapped, subscribers)


def _dropped(envelope: Envelope, result: MapResult, on_invalid: str) -> str | None:
    """Log the segment groups the mapping dropped, or refuse them when the adapter says so.

    Returns:
        None to deliver what was kept, or the quarantine reason when a group was dropped and
        the source adapter's ``on_invalid_segment`` is ``quarantine``: it names the first
        group and why, and counts the others (the envelope keeps every finding).
    """
    dropped = [f for f in result.findings if f.code == DROPPED]
    if not dropped:
        return None
    if on_invalid == "quarantine":
        first = dropped[0]
        more = f" (and {len(dropped) - 1} more)" if len(dropped) > 1 else ""
        return (
            f"malformed segment group at {first.location}{more}; adapter {envelope.source} "
            f"quarantines the whole message (on_invalid_segment: quarantine): {first.message}"
        )
    # Structural locations and rule names only: never a value.
    log.warning(
        "message.segments_dropped",
        envelope_id=envelope.id,
        control_id=envelope.control_id,
        adapter=envelope.source,
        dropped=[f"{f.location} {f.rule}" for f in dropped],
    )
    return None


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


def _map_hl7v2(
    envelope: Envelope, raw: bytes, mappings: MappingSet, charset: str, ctx: MapContext
) -> tuple[Envelope, MapResult, tuple[str, ...]]:
    message = parse(decode(raw, charset))
    msh = message.msh
    envelope = envelope.model_copy(
        update={
            "event": message.event,
            "version": message.version,
            "control_id": message.control_id,
            "correlation_id": message.control_id,
            "sender": f"{msh.value(3)}^{msh.value(4)}",
        }
    )
    result = mappings.map_hl7v2(message, ctx)
    check(message.event, result.bundle)
    return envelope, result, tuple(mappings.unmapped(message, envelope.source, result))


def _map_fhir(
    envelope: Envelope, raw: bytes, mappings: MappingSet, ctx: MapContext
) -> tuple[Envelope, MapResult, tuple[str, ...]]:
    """Map FHIR JSON (validated at the edge) with ``mappings/fhir/``; no canonical ``check``.

    The FHIR inbound file's ``require:`` rules say what each resource type needs (its patient);
    a lone Observation naming its patient by reference carries no Patient resource.
    """
    done = mappings.map_fhir(read_fhir(raw), ctx)
    envelope = envelope.model_copy(
        update={"event": done.event, "version": "4.0.1", "correlation_id": done.correlation_id}
    )
    return envelope, done.result, done.unmapped


def _route(
    envelope: Envelope,
    result: MapResult,
    unmapped: tuple[str, ...],
    subscribers: Sequence[AdapterSpec],
) -> tuple[Envelope, list[AdapterSpec]]:
    envelope = envelope.model_copy(
        update={
            "bundle": result.bundle,
            "findings": result.findings,
            "mappings": result.mappings,
            "partition_key": result.partition_key,
            "unmapped": unmapped,
        }
    )
    destinations = route(envelope, subscribers)
    state = MessageState.ROUTED if destinations else MessageState.FILTERED
    return envelope.model_copy(update={"state": state}), destinations
