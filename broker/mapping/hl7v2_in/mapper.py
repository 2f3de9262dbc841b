"""One HL7 v2 message through its compiled inbound mapping: the canonical message Bundle."""

from __future__ import annotations

from datetime import UTC

from broker.canonical import validate_bundle
from broker.envelope import MappingRef
from broker.identity import bundle_patient_key
from broker.mapping.bundle import message_bundle
from broker.mapping.context import MapContext, MapResult, TraceStep
from broker.mapping.hl7v2_in.engine import CompiledMapping, message_header
from broker.parsing.hl7v2 import Message

__all__ = ["map_hl7v2"]


def map_hl7v2(
    mapping: CompiledMapping,
    message: Message,
    ctx: MapContext,
    refs: tuple[MappingRef, ...],
    *,
    trace: list[TraceStep] | None = None,
    full_validation: bool = False,
) -> MapResult:
    """Map a tokenized message with ``mapping`` to a FHIR R4 message Bundle.

    Args:
        mapping: the message's mapping (``MappingSet`` picks it by event, version and adapter).
        message: the parsed message.
        ctx: what the message's text does not say.
        refs: what the result records as the mappings used (the mapping, its bases, its tables).
        trace: for dry runs only (it receives the patient's values): one TraceStep per element.
        full_validation: also validate every resource with fhir.resources.

    Raises:
        MappingError: a rule failed; names the mapping file, rule and source path.
        CanonicalError: a required element is missing, or (``full_validation``) the Bundle is
            not valid FHIR R4.
    """
    received = ctx.received_at if ctx.received_at.tzinfo else ctx.received_at.replace(tzinfo=UTC)
    instances, env = mapping.run(
        message, ctx.source, ctx.timezone, trace, ctx.identifier_systems, received
    )
    control_id = message.control_id
    header = message_header(message, ctx.source, control_id, [i for i in instances if i.focus])
    entries = [(i.id, i.resource) for i in instances]
    bundle = message_bundle(ctx.source, control_id, received, header, entries)
    if full_validation:
        validate_bundle(bundle)
    return MapResult(
        bundle=bundle,
        findings=tuple(env.findings),
        mappings=refs,
        partition_key=bundle_patient_key(bundle, ctx.source),
        event=message.event,
        version=message.version,
        control_id=control_id,
        correlation_id=control_id,
        sender=f"{message.sending_application}^{message.sending_facility}",
        read=env.seen,
    )
