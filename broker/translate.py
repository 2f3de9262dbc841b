"""Offline dry run of one message through parsing and mapping (``passerelle translate``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from broker.envelope import Envelope, new_id
from broker.errors import ConfigurationError
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse

__all__ = ["TARGETS", "translate"]

TARGETS = ("canonical", "fhir", "hl7v2")
"""What ``translate`` can produce."""


def translate(
    raw: bytes,
    *,
    to: str,
    mappings_dir: Path,
    source: str = "translate",
    charset: str = "utf-8",
    timezone: str = "Africa/Casablanca",
) -> str:
    """Translate one HL7 v2 message without the broker running.

    Args:
        raw: the message's bytes (decoded by MSH-18, else ``charset``).
        to: ``canonical`` (the Envelope JSON), ``fhir`` (the canonical message Bundle JSON) or
            ``hl7v2`` (ER7 rendered back with the outbound mapping, v2.5.1).
        mappings_dir: the ``mappings/`` directory to load.
        source: the inbound adapter id the message is taken to come from.
        charset: the charset used when MSH-18 is empty.
        timezone: the sender's time zone for times without an offset.

    Returns:
        The translation as text (JSON or ER7 with CR segment separators).

    Raises:
        BrokerError: a subclass with a one-line message: ConfigurationError for a bad ``to``,
            MappingSpecError for bad mapping files, HL7v2ParseError, NoMappingError,
            MappingError or CanonicalError for a bad message.
    """
    if to not in TARGETS:
        msg = f"cannot translate to {to!r}; choose one of {', '.join(TARGETS)}"
        raise ConfigurationError(msg)
    # A dry run can afford the full fhir.resources validation of every resource.
    mappings = MappingSet.load(mappings_dir, full_validation=True)
    message = parse(decode(raw, charset))
    envelope_id = new_id()
    received_at = datetime.now(UTC)
    result = mappings.map_hl7v2(
        message, MapContext(envelope_id, source, timezone, received_at=received_at)
    )
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
