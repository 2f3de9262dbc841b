"""What a mapping run is given (MapContext) and what it returns (MapResult)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker.envelope import Finding, MappingRef
from broker.identity import IdentifierSystem

__all__ = ["MapContext", "MapResult", "TraceStep"]


@dataclass(frozen=True)
class MapContext:
    """Facts about one message that are not in its text.

    Attributes:
        envelope_id: the envelope's id, for error messages.
        source: the inbound adapter's id; part of every resource id, so two senders using the
            same control id never collide.
        timezone: the sender's IANA time zone, for HL7 times sent without an offset.
        received_at: when the broker received the message (Bundle.timestamp); keyword-only.
        identifier_systems: the inbound adapter's ``identifier_systems`` (``broker.identity``);
            keyword-only.
    """

    envelope_id: str
    source: str
    timezone: str = "Africa/Casablanca"
    received_at: datetime = field(kw_only=True)
    identifier_systems: tuple[IdentifierSystem, ...] = field(default=(), kw_only=True)


@dataclass(frozen=True)
class MapResult:
    """A mapped canonical message, whatever the input format: the one result of every mapping.

    ``map_message`` fills every attribute; ``MappingSet.map_hl7v2`` and ``MappingSet.map_fhir``
    (the direction mappers alone, without the pipeline's checks) fill what they know.

    Attributes:
        bundle: the FHIR R4 message Bundle (MessageHeader first), as validated plain JSON data.
        findings: data-quality observations; never hold a patient's value.
        mappings: the mapping files used, with their content hashes.
        partition_key: the first Patient's first identifier as ``system|value``.
        event: the message's event: ``ADT^A01`` (MSH-9), or for FHIR input its MessageHeader's
            event or resource type.
        version: HL7 v2 MSH-12, or ``4.0.1`` for FHIR R4 input.
        control_id: HL7 v2 MSH-10; None for FHIR input.
        correlation_id: what ties replies and repeats to the input: MSH-10, or a FHIR input's
            Bundle.identifier, ``type/id`` or digest.
        sender: HL7 v2 ``MSH-3^MSH-4``; None for FHIR input.
        unmapped: what the input holds that the canonical message does not keep: ``SEG-n`` of
            every HL7 v2 field no rule read (``MappingSet.unmapped``), or the FHIRPath-like
            location of every FHIR element left out. Structural, never a value. Empty from
            ``MappingSet.map_hl7v2``, which does not compute it.
        refused: set by ``map_message`` when the source adapter's ``on_invalid_segment`` is
            ``quarantine`` and a malformed segment group was dropped: the quarantine reason.
        read: for HL7 v2 input, every field of a segment instance the mapping read
            (``transforms.field_read`` keys); what ``MappingSet.unmapped`` compares the
            message with. Not part of the output.
    """

    bundle: dict[str, Any]
    findings: tuple[Finding, ...]
    mappings: tuple[MappingRef, ...]
    partition_key: str
    event: str = ""
    version: str = ""
    control_id: str | None = None
    correlation_id: str | None = None
    sender: str | None = None
    unmapped: tuple[str, ...] = ()
    refused: str | None = None
    read: frozenset[int] | set[int] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One output element and the rule that wrote it (``passerelle translate --trace``).

    Holds the patient's values: a dry-run tool's output, never logged.

    Attributes:
        file: the mapping file.
        line: the line of the rule in that file.
        source: what the rule read (``PID-3(*)``, ``value``, ``reference:patient``).
        target: the element written (``Patient.identifier[]``, ``Observation(2).code``).
        value: the element's value.
    """

    file: str
    line: int | None
    source: str
    target: str
    value: Any

    def __str__(self) -> str:
        value = json.dumps(self.value, ensure_ascii=False, separators=(",", ":"))
        return f"{self.file}:{self.line or 0} {self.source} -> {self.target} = {value}"
