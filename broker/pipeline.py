"""The pipeline: the one place that chains parse → map → route for a journalled message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from broker.adapters.spec import AdapterSpec
from broker.canonical import check
from broker.envelope import Envelope, MessageState
from broker.errors import MessageError
from broker.log import get_logger
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse
from broker.routing import route

__all__ = ["envelope_from_journal", "process"]

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

    Returns:
        The envelope in its new state (ROUTED, FILTERED or FAILED with a reason) and the
        subscribers it must be delivered to. Never raises for a bad message.
    """
    if envelope.content_type == "application/fhir+json":
        # Kept in the journal and quarantined with this reason until FHIR inbound mappings exist.
        reason = "FHIR inbound mapping is not available yet; the message is kept for replay"
        return envelope.model_copy(update={"state": MessageState.FAILED, "reason": reason}), []
    source = adapters.get(envelope.source)
    charset = source.charset if source else "utf-8"
    timezone = source.timezone if source else "Africa/Casablanca"
    try:
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
        ctx = MapContext(
            envelope_id=envelope.id,
            source=envelope.source,
            timezone=timezone,
            received_at=envelope.received_at,
        )
        result = mappings.map_hl7v2(message, ctx)
        check(message.event, result.bundle)
        unmapped = tuple(mappings.unmapped(message, envelope.source))
    except MessageError as exc:
        failed = envelope.model_copy(update={"state": MessageState.FAILED, "reason": str(exc)})
        return failed, []
    except Exception as exc:
        # A bug must cost one quarantined message, never a worker or the partition behind it.
        log.exception("pipeline.internal_error", envelope_id=envelope.id, adapter=envelope.source)
        reason = (
            f"internal error while parsing or mapping ({type(exc).__name__}); see the worker log"
        )
        return envelope.model_copy(update={"state": MessageState.FAILED, "reason": reason}), []
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
