"""Offline dry run of one message through parsing and mapping (``passerelle translate``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from broker.envelope import Envelope, new_id
from broker.errors import ConfigurationError, NoMappingError
from broker.mapping import MapContext, MappingSet, MapResult, TraceStep
from broker.parsing.hl7v2 import Message, decode, parse

__all__ = ["TARGETS", "Translation", "dry_run", "translate"]

TARGETS = ("canonical", "fhir", "hl7v2")
"""What ``translate`` can produce."""


@dataclass(frozen=True)
class Translation:
    """What a dry run gives: the output, and what the mapping did and did not read.

    Attributes:
        output: the translation (what ``translate`` returns).
        trace: one TraceStep per element written (empty unless asked); holds patient values.
        unmapped: ``SEG-n`` of every field present in the message that no rule read.
    """

    output: str
    trace: tuple[TraceStep, ...]
    unmapped: tuple[str, ...]


def translate(
    raw: bytes,
    *,
    to: str,
    mappings_dir: Path,
    source: str = "translate",
    charset: str = "utf-8",
    timezone: str = "Africa/Casablanca",
) -> str:
    """Translate one HL7 v2 message without the broker running; see ``dry_run``.

    Returns:
        The translation as text (JSON or ER7 with CR segment separators).

    Raises:
        BrokerError: as ``dry_run``.
    """
    run = dry_run(
        raw, to=to, mappings_dir=mappings_dir, source=source, charset=charset, timezone=timezone
    )
    return run.output


def dry_run(
    raw: bytes,
    *,
    to: str,
    mappings_dir: Path,
    source: str = "translate",
    charset: str = "utf-8",
    timezone: str = "Africa/Casablanca",
    trace: bool = False,
) -> Translation:
    """Translate one HL7 v2 message without the broker running.

    Args:
        raw: the message's bytes (decoded by MSH-18, else ``charset``).
        to: ``canonical`` (the Envelope JSON), ``fhir`` (the canonical message Bundle JSON) or
            ``hl7v2`` (ER7 rendered back with the outbound mapping, v2.5.1).
        mappings_dir: the ``mappings/`` directory to load.
        source: the inbound adapter id the message is taken to come from.
        charset: the charset used when MSH-18 is empty.
        timezone: the sender's time zone for times without an offset.
        trace: record a TraceStep per element written.

    Returns:
        The output, the trace and the unmapped fields.

    Raises:
        BrokerError: a subclass with a one-line message: ConfigurationError for a bad ``to``,
            MappingSpecError for bad mapping files, HL7v2ParseError, NoMappingError (also for
            FHIR JSON input, not supported yet), MappingError or CanonicalError for a bad message.
    """
    if to not in TARGETS:
        msg = f"cannot translate to {to!r}; choose one of {', '.join(TARGETS)}"
        raise ConfigurationError(msg)
    # A dry run can afford the full fhir.resources validation of every resource.
    _refuse_fhir(raw)
    mappings = MappingSet.load(mappings_dir, full_validation=True)
    message = parse(decode(raw, charset))
    envelope_id = new_id()
    received_at = datetime.now(UTC)
    steps: list[TraceStep] | None = [] if trace else None
    result = mappings.map_hl7v2(
        message, MapContext(envelope_id, source, timezone, received_at=received_at), trace=steps
    )
    unmapped = tuple(mappings.unmapped(message, source))
    output = _render(to, mappings, message, result, envelope_id, source, received_at)
    return Translation(output, tuple(steps or ()), unmapped)


def _refuse_fhir(raw: bytes) -> None:
    """Tell FHIR JSON apart from ER7 so it gets a clear refusal, not an HL7 parse error."""
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head not in (b"{", b"["):
        return
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except ValueError:
        return
    if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
        kind = data["resourceType"]
        if kind == "Bundle" and isinstance(data.get("type"), str):
            kind = f"Bundle of type {data['type']}"
        msg = (
            f"FHIR JSON input ({kind}) is not supported yet; "
            "translate reads HL7 v2 ER7 messages only"
        )
        raise NoMappingError(msg, location="resourceType")


def _render(
    to: str,
    mappings: MappingSet,
    message: Message,
    result: MapResult,
    envelope_id: str,
    source: str,
    received_at: datetime,
) -> str:
    if to == "fhir":
        return json.dumps(result.bundle, ensure_ascii=False, indent=2)
    if to == "hl7v2":
        msh = message.msh
        return mappings.render_hl7v2(
            result.bundle,
            version="2.5.1",
            control_id=message.control_id,
            receiving_application=msh.value(5),
            receiving_facility=msh.value(6),
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
        bundle=result.bundle,
    )
    return envelope.model_dump_json(indent=2)
