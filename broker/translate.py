"""Offline dry run of one message through parsing and mapping (``passerelle translate``).

The input's format is detected: JSON (``{`` first, after a BOM and blanks) is FHIR R4, a
resource or a Bundle, mapped with ``mappings/fhir/``; anything else is HL7 v2 ER7.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.envelope import Envelope, Finding, new_id
from broker.errors import ConfigurationError
from broker.mapping import MapContext, MappingSet, MapResult, TraceStep
from broker.mapping.fhir_in import FhirResult
from broker.mapping.layers import MappingRoots
from broker.parsing.fhir import looks_like_json, read_fhir
from broker.parsing.hl7v2 import Message, decode, parse

__all__ = ["TARGETS", "Translation", "dry_run", "translate"]

TARGETS = ("canonical", "fhir", "hl7v2")
OUTPUT_CHARSET = "utf-8"
"""What ``to="hl7v2"`` names in MSH-18: the text is returned as ``str`` and the CLI writes it UTF-8
(there is no outbound subscriber, whose ``charset`` would decide, in a dry run)."""
"""What ``translate`` can produce."""


@dataclass(frozen=True)
class Translation:
    """What a dry run gives: the output, and what the mapping did and did not read.

    Attributes:
        output: the translation (what ``translate`` returns).
        trace: one TraceStep per element written (empty unless asked); holds patient values.
        unmapped: ``SEG-n`` of every field present in the message that no rule read; for FHIR
            input, the FHIRPath-like location of every element the canonical message does not
            keep (``Bundle.entry[2].request``).
        findings: the mapping's findings, among them one ``segment-dropped`` per malformed
            segment group left out of the Bundle.
    """

    output: str
    trace: tuple[TraceStep, ...]
    unmapped: tuple[str, ...]
    findings: tuple[Finding, ...] = ()


def translate(
    raw: bytes,
    *,
    to: str,
    mappings_dir: MappingRoots,
    source: str = "translate",
    charset: str = "utf-8",
    timezone: str = "Africa/Casablanca",
    hl7_version: str = "2.5.1",
) -> str:
    """Translate one HL7 v2 message or FHIR resource/Bundle without the broker; see ``dry_run``.

    Returns:
        The translation as text (JSON or ER7 with CR segment separators).

    Raises:
        BrokerError: as ``dry_run``.
    """
    run = dry_run(
        raw,
        to=to,
        mappings_dir=mappings_dir,
        source=source,
        charset=charset,
        timezone=timezone,
        hl7_version=hl7_version,
    )
    return run.output


def dry_run(
    raw: bytes,
    *,
    to: str,
    mappings_dir: MappingRoots,
    source: str = "translate",
    charset: str = "utf-8",
    timezone: str = "Africa/Casablanca",
    trace: bool = False,
    hl7_version: str = "2.5.1",
) -> Translation:
    """Translate one HL7 v2 message, or one FHIR R4 resource or Bundle, without the broker running.

    Args:
        raw: the message's bytes: ER7 (decoded by MSH-18, else ``charset``) or FHIR JSON (UTF-8).
        to: ``canonical`` (the Envelope JSON), ``fhir`` (the canonical message Bundle JSON) or
            ``hl7v2`` (ER7 rendered back with the outbound mapping, v2.5.1, MSH-18 naming
            UTF-8: ``OUTPUT_CHARSET``).
        mappings_dir: the ``mappings/`` directory to load, or its layers (a site's over the
            base set, ``broker.mapping.layers``).
        source: the inbound adapter id the message is taken to come from.
        charset: the charset used when MSH-18 is empty.
        timezone: the sender's time zone for times without an offset.
        trace: record a TraceStep per element written.
        hl7_version: MSH-12 of the ER7 written for ``to="hl7v2"``.

    Returns:
        The output, the trace and the unmapped fields.

    Raises:
        BrokerError: a subclass with a one-line message: ConfigurationError for a bad ``to``,
            MappingSpecError for bad mapping files, HL7v2ParseError, FHIRParseError,
            NoMappingError, MappingError or CanonicalError for a bad message (a FHIR resource
            lacking what ``mappings/fhir/`` requires is a CanonicalError with the reason).
    """
    if to not in TARGETS:
        msg = f"cannot translate to {to!r}; choose one of {', '.join(TARGETS)}"
        raise ConfigurationError(msg)
    # A dry run can afford the full fhir.resources validation of every resource.
    mappings = MappingSet.load(mappings_dir, full_validation=True)
    envelope_id = new_id()
    received_at = datetime.now(UTC)
    steps: list[TraceStep] | None = [] if trace else None
    if looks_like_json(raw):
        ctx = MapContext(envelope_id, source, timezone, received_at=received_at)
        done = mappings.map_fhir(read_fhir(raw), ctx, trace=steps)
        output = _render_fhir(
            to, mappings, done, envelope_id, source, received_at, hl7_version=hl7_version
        )
        return Translation(output, tuple(steps or ()), done.unmapped, done.result.findings)
    message = parse(decode(raw, charset))
    result = mappings.map_hl7v2(
        message, MapContext(envelope_id, source, timezone, received_at=received_at), trace=steps
    )
    unmapped = tuple(mappings.unmapped(message, source, result))
    output = _render(
        to,
        mappings,
        message,
        result,
        envelope_id,
        source,
        received_at,
        hl7_version=hl7_version,
        unmapped=unmapped,
    )
    return Translation(output, tuple(steps or ()), unmapped, result.findings)


def _render_fhir(
    to: str,
    mappings: MappingSet,
    done: FhirResult,
    envelope_id: str,
    source: str,
    received_at: datetime,
    *,
    hl7_version: str,
) -> str:
    bundle = done.result.bundle
    if to == "fhir":
        return json.dumps(bundle, ensure_ascii=False, indent=2)
    if to == "hl7v2":
        # MSH-10 is at most 20 characters (v2.5.1 §2.14.9.10): the envelope id's first 20.
        return mappings.render_hl7v2(
            bundle,
            version=hl7_version,
            control_id=envelope_id[:20],
            receiving_application="",
            receiving_facility="",
            charset=OUTPUT_CHARSET,
        )
    envelope = Envelope(
        id=envelope_id,
        source=source,
        content_type="application/fhir+json",
        received_at=received_at,
        correlation_id=done.correlation_id,
        event=done.event,
        version="4.0.1",
        partition_key=done.result.partition_key,
        mappings=done.result.mappings,
        findings=done.result.findings,
        unmapped=done.unmapped,
        bundle=bundle,
    )
    return envelope.model_dump_json(indent=2)


def _render(
    to: str,
    mappings: MappingSet,
    message: Message,
    result: MapResult,
    envelope_id: str,
    source: str,
    received_at: datetime,
    *,
    hl7_version: str,
    unmapped: tuple[str, ...],
) -> str:
    if to == "fhir":
        return json.dumps(result.bundle, ensure_ascii=False, indent=2)
    if to == "hl7v2":
        msh = message.msh
        return mappings.render_hl7v2(
            result.bundle,
            version=hl7_version,
            control_id=message.control_id,
            receiving_application=msh.value(5),
            receiving_facility=msh.value(6),
            charset=OUTPUT_CHARSET,
        )
    sender = "^".join(part for part in (message.msh.value(3), message.msh.value(4)) if part)
    envelope = Envelope(
        id=envelope_id,
        source=source,
        received_at=received_at,
        correlation_id=message.control_id,
        event=message.event,
        version=message.version,
        control_id=message.control_id,
        sender=sender or None,
        partition_key=result.partition_key,
        mappings=result.mappings,
        findings=result.findings,
        unmapped=unmapped,
        bundle=result.bundle,
    )
    return envelope.model_dump_json(indent=2)
