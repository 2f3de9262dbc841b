"""Offline dry run of one message through parsing and mapping (``passerelle translate``).

The input's format is detected: JSON (``{`` first, after a BOM and blanks) is FHIR R4, a
resource or a Bundle, mapped with ``mappings/fhir/``; anything else is HL7 v2 ER7. The message
goes through ``broker.mapping.map_message`` as in the pipeline, every check included, plus the
full fhir.resources validation of every resource.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broker.envelope import Envelope, Finding, new_id
from broker.errors import CanonicalError, ConfigurationError
from broker.mapping import (
    FHIR_JSON,
    HL7V2,
    MappingSet,
    MapResult,
    SourceOptions,
    SourceSettings,
    TraceStep,
    map_message,
    read_message,
)
from broker.mapping.layers import MappingRoots
from broker.parsing.fhir import looks_like_json
from broker.parsing.hl7v2 import Message

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
    mappings_dir: MappingRoots | MappingSet,
    source: str = "translate",
    charset: str = "utf-8",
    timezone: str = "Africa/Casablanca",
    trace: bool = False,
    hl7_version: str = "2.5.1",
    received_at: datetime | None = None,
    settings: SourceSettings | None = None,
) -> Translation:
    """Translate one HL7 v2 message, or one FHIR R4 resource or Bundle, without the broker running.

    Args:
        raw: the message's bytes: ER7 (decoded by MSH-18, else ``charset``) or FHIR JSON (UTF-8).
        to: ``canonical`` (the Envelope JSON), ``fhir`` (the canonical message Bundle JSON) or
            ``hl7v2`` (ER7 rendered back with the outbound mapping, v2.5.1, MSH-18 naming
            UTF-8: ``OUTPUT_CHARSET``).
        mappings_dir: the ``mappings/`` directory to load, or its layers (a site's over the
            base set, ``broker.mapping.layers``), or mappings already loaded (loaded with
            ``full_validation=True``, as a dry run loads them).
        source: the inbound adapter id the message is taken to come from.
        charset: the charset used when MSH-18 is empty.
        timezone: the sender's time zone for times without an offset.
        trace: record a TraceStep per element written.
        hl7_version: MSH-12 of the ER7 written for ``to="hl7v2"``.
        received_at: when the message is taken to be received (Bundle.timestamp); now when
            left out.
        settings: the source adapter's registration (its charset, time zone, identifier
            systems, ``on_invalid_segment``), as the pipeline applies them; when left out,
            ``charset`` and ``timezone`` with the defaults for the rest.

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
    if isinstance(mappings_dir, MappingSet):
        mappings = mappings_dir
    else:
        mappings = MappingSet.load(mappings_dir, full_validation=True)
    envelope_id = new_id()
    received_at = received_at or datetime.now(UTC)
    steps: list[TraceStep] | None = [] if trace else None
    content_type = FHIR_JSON if looks_like_json(raw) else HL7V2
    given = settings or SourceOptions(charset=charset, timezone=timezone)
    message = read_message(raw, content_type, given.charset)
    result = map_message(
        message,
        mappings,
        source=source,
        envelope_id=envelope_id,
        received_at=received_at,
        content_type=content_type,
        settings=given,
        full_validation=True,
        trace=steps,
    )
    if result.refused:
        # The adapter quarantines a message with a malformed segment group, as the pipeline does.
        raise CanonicalError(result.refused)
    output = _render(to, mappings, message, result, envelope_id, source, received_at, hl7_version)
    return Translation(output, tuple(steps or ()), result.unmapped, result.findings)


def _render(
    to: str,
    mappings: MappingSet,
    message: Message | dict[str, Any],
    result: MapResult,
    envelope_id: str,
    source: str,
    received_at: datetime,
    hl7_version: str,
) -> str:
    if to == "fhir":
        return json.dumps(result.bundle, ensure_ascii=False, indent=2)
    if to == "hl7v2":
        if isinstance(message, Message):
            msh = message.msh
            control_id, application, facility = message.control_id, msh.value(5), msh.value(6)
        else:
            # MSH-10 is at most 20 characters (v2.5.1 §2.14.9.10): the envelope id's first 20.
            control_id, application, facility = envelope_id[:20], "", ""
        return mappings.render_hl7v2(
            result.bundle,
            version=hl7_version,
            control_id=control_id,
            receiving_application=application,
            receiving_facility=facility,
            charset=OUTPUT_CHARSET,
        )
    envelope = Envelope(
        id=envelope_id,
        source=source,
        content_type=FHIR_JSON if isinstance(message, dict) else HL7V2,
        received_at=received_at,
        correlation_id=result.correlation_id,
        event=result.event,
        version=result.version,
        control_id=result.control_id,
        sender=result.sender,
        partition_key=result.partition_key,
        mappings=result.mappings,
        findings=result.findings,
        unmapped=result.unmapped,
        bundle=result.bundle,
    )
    return envelope.model_dump_json(indent=2)
