"""``map_message``: one message of any input format mapped, with every check the pipeline runs.

The pipeline, ``passerelle translate``, the golden runner and the style check all map through
this one function, so they agree on the Bundle, the findings and the unmapped report of every
message (``tests/mapping/test_one_path.py`` proves it on every golden case and sample).

For HL7 v2 it decodes (MSH-18, else the adapter's charset) and tokenizes, maps with the
inbound mapping of the event and version (a site mapping for the adapter first), runs the
canonical ``check`` (an identified patient, the event family's resources), reports the fields
no rule read, and applies the adapter's ``on_invalid_segment`` to the segment groups the
mapping dropped. For FHIR R4 JSON it reads the JSON and maps it with ``mappings/fhir/``, whose
``require:`` rules and full fhir.resources validation run inside the mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from broker.canonical import check, validate_bundle
from broker.envelope import ContentType, Finding
from broker.identity import IdentifierSystem
from broker.mapping.context import MapContext, MapResult, TraceStep
from broker.mapping.hl7v2_in.drops import DROPPED
from broker.mapping.loader import MappingSet
from broker.parsing.fhir import read_fhir
from broker.parsing.hl7v2 import Message, decode, parse

__all__ = [
    "FHIR_JSON",
    "HL7V2",
    "SourceOptions",
    "SourceSettings",
    "map_message",
    "read_message",
]

HL7V2: ContentType = "application/hl7-v2"
"""The content type of HL7 v2 ER7 input."""
FHIR_JSON: ContentType = "application/fhir+json"
"""The content type of FHIR R4 JSON input (a resource or a Bundle)."""


class SourceSettings(Protocol):
    """What ``map_message`` reads of the source adapter; an ``AdapterSpec`` has all of it."""

    @property
    def charset(self) -> str:
        """The Python codec of ER7 bytes whose MSH-18 is empty."""

    @property
    def timezone(self) -> str:
        """The sender's IANA time zone, for HL7 times sent without an offset."""

    @property
    def identifier_systems(self) -> Sequence[IdentifierSystem]:
        """The adapter's identifier systems (``broker.identity``)."""

    @property
    def on_invalid_segment(self) -> str:
        """``drop`` (deliver what was kept) or ``quarantine`` (refuse the whole message)."""


@dataclass(frozen=True)
class SourceOptions:
    """Source settings for callers without an adapter registration (a dry run, a golden case).

    The defaults are the pipeline's for a message from an adapter it does not know.
    """

    charset: str = "utf-8"
    timezone: str = "Africa/Casablanca"
    identifier_systems: tuple[IdentifierSystem, ...] = ()
    on_invalid_segment: str = "drop"


_DEFAULTS = SourceOptions()


def read_message(
    raw: bytes, content_type: ContentType = HL7V2, charset: str = "utf-8"
) -> Message | dict[str, Any]:
    """Parse raw input: ER7 decoded by MSH-18 (else ``charset``) and tokenized, or FHIR JSON.

    Raises:
        HL7v2ParseError: the ER7 cannot be decoded or has no MSH.
        FHIRParseError: not UTF-8 JSON holding a FHIR resource.
    """
    if content_type == FHIR_JSON:
        return read_fhir(raw)
    return parse(decode(raw, charset))


def map_message(
    message: bytes | Message | dict[str, Any],
    mappings: MappingSet,
    *,
    source: str,
    envelope_id: str,
    received_at: datetime,
    content_type: ContentType = HL7V2,
    settings: SourceSettings | None = None,
    full_validation: bool = False,
    trace: list[TraceStep] | None = None,
) -> MapResult:
    """Map one message to the canonical FHIR R4 message Bundle and run every check.

    Args:
        message: the raw bytes, or the message ``read_message`` gives (a tokenized ER7
            ``Message``, or FHIR JSON parsed into a dict).
        mappings: the loaded mappings.
        source: the inbound adapter the message came from (its site mappings apply).
        envelope_id: the envelope's id, for error messages.
        received_at: when the broker received the message (Bundle.timestamp).
        content_type: ``application/hl7-v2`` or ``application/fhir+json``.
        settings: the source adapter's settings (its ``AdapterSpec``); None for the defaults.
        full_validation: also validate every resource with fhir.resources (dry runs, golden
            cases); FHIR input is always validated.
        trace: for dry runs only (it receives the patient's values): one TraceStep per element.

    Returns:
        The MapResult with every attribute filled. ``refused`` is set, and the message must
        not be delivered, when the adapter quarantines messages with a malformed segment group.

    Raises:
        MessageError: the message cannot be parsed, has no mapping, a rule failed, or the
            canonical message is refused (CanonicalError names why).
    """
    given = settings or _DEFAULTS
    ctx = MapContext(
        envelope_id,
        source,
        given.timezone,
        received_at=received_at,
        identifier_systems=tuple(given.identifier_systems),
    )
    if isinstance(message, bytes):
        message = read_message(message, content_type, given.charset)
    if isinstance(message, dict):
        return mappings.map_fhir(message, ctx, trace=trace)
    result = mappings.map_hl7v2(message, ctx, trace=trace)
    # The pipeline's refusals (no identified patient, an order without its ServiceRequest...).
    check(message.event, result.bundle)
    if full_validation and not mappings.full_validation:
        validate_bundle(result.bundle)
    return replace(
        result,
        unmapped=tuple(mappings.unmapped(message, source, result)),
        refused=_refused(result.findings, source, given.on_invalid_segment),
    )


def _refused(findings: Sequence[Finding], source: str, on_invalid: str) -> str | None:
    """The quarantine reason when a segment group was dropped and the adapter refuses them.

    It names the first group and why, and counts the others (the findings keep every one).
    """
    if on_invalid != "quarantine":
        return None
    dropped = [f for f in findings if f.code == DROPPED]
    if not dropped:
        return None
    first = dropped[0]
    more = f" (and {len(dropped) - 1} more)" if len(dropped) > 1 else ""
    return (
        f"malformed segment group at {first.location}{more}; adapter {source} "
        f"quarantines the whole message (on_invalid_segment: quarantine): {first.message}"
    )
