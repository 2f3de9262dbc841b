"""Orders and documents: EI identifiers (v2.5.1 §2A.28), order identifiers and MDM document
bodies (ch. 9)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.envelope import Finding
from broker.identity import slug as _slug
from broker.mapping.transforms.base import Env, SourceValue, Transform, field_read, first_value
from broker.mapping.transforms.names import V2_0203
from broker.mapping.transforms.observations import fn_ed_attachment
from broker.mapping.transforms.strings import formatted_text
from broker.parsing.hl7v2 import Segment

__all__ = ["TRANSFORMS", "fn_document_attachment", "fn_ei_identifier", "fn_order_identifier"]


class _OrderArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    system: str
    """System URI; ``{namespace}`` is the order number's EI-2 (else MSH-4.1) and ``{sender}``
    MSH-4.1, as slugs."""
    numbers: int = Field(2, ge=1, le=4)
    """How many of the first sources are alternatives for the order number (first valued
    wins); the sources after them are joined to it."""


def fn_order_identifier(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """Identifier of one order or result: the order number, then what tells it from its siblings.

    The order number is the first valued of the first ``numbers`` sources (``ORC-2``,
    ``OBR-2``... : placer, else filler); the next sources' first components follow it, joined
    with ``-`` (``OBR-4`` test code, ``OBX-1`` set id, ``OBX-3`` code, ``OBX-4`` sub-id). Several
    OBR may share one placer number and several OBX one set id (seen in real feeds); a FHIR
    transaction must not hold two entries with the same conditional URL (R4 §3.1.0.11.2), so the
    identifier a resource is written by includes what makes it unique (docs/mappings.md,
    "Identifiers"). None without an order number: the renderer then gives the resource a
    Passerelle identifier, never one that could match another order's result.
    """
    if not isinstance(args, _OrderArgs):
        return None
    given = [v for v in values[: args.numbers] if v is not None and v.comp(1).strip()]
    if not given:
        return None
    number = given[0].comp(1).strip()
    rest = [v.comp(1).strip() for v in values[args.numbers :] if v is not None]
    sender = _slug(env.sender) or "unknown"
    namespace = _slug(given[0].comp(2).strip()) or sender
    system = args.system.replace("{namespace}", namespace).replace("{sender}", sender)
    return {"system": system, "value": "-".join([number, *[p for p in rest if p]])}


class _EiArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    system: str
    """System URI; ``{namespace}`` is EI-2 (else MSH-4.1) and ``{sender}`` MSH-4.1, as slugs."""
    type: str | None = Field(None, pattern=r"^[A-Z]{2,5}$")
    """Identifier.type code in HL7 table 0203 (``PLAC`` placer, ``FILL`` filler number)."""


def fn_ei_identifier(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """EI → Identifier: EI-1 value, system per EI-2 namespace or sender, type from ``args``.

    Placer and filler order numbers (ORC-2/ORC-3, OBR-2/OBR-3) and appointment ids (SCH-1/SCH-2)
    are EIs; the v2-to-FHIR IG EI → Identifier map types them PLAC/FILL (table 0203).
    """
    v = first_value(values)
    if v is None or not isinstance(args, _EiArgs):
        return None
    value = v.comp(1).strip()
    if not value:
        return None
    namespace = _slug(v.comp(2).strip()) or _slug(env.sender) or "unknown"
    system = args.system.replace("{namespace}", namespace)
    system = system.replace("{sender}", _slug(env.sender) or "unknown")
    ident: dict[str, Any] = {"system": system, "value": value}
    if args.type:
        ident["type"] = {"coding": [{"system": V2_0203, "code": args.type}]}
    return ident


_TEXT_TYPES = frozenset({"TX", "FT", "ST"})


def _document_segments(first: SourceValue, env: Env) -> list[Segment]:
    """The OBX segments of the document: from the first one, while OBX or NTE follow."""
    segments = env.message.segments
    start = next(i for i, s in enumerate(segments) if s is first.segment)
    found = []
    for segment in segments[start:]:
        if segment.name not in ("OBX", "NTE"):
            break
        if segment.name == "OBX":
            found.append(segment)
    return found


def fn_document_attachment(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """The document body of an MDM message (v2.5.1 §9.6, OBX after TXA) → Attachment.

    Read from the first OBX-5 of the document (``from: OBX-5``); every OBX that follows it
    (with their NTEs) is part of the body. An ED (OBX-2 ``ED``) becomes what ``ed_attachment``
    gives (base64 data and the MIME type of ED-2/ED-3); TX/FT/ST lines, each repetition of OBX-5
    a line (FT formatting as in ``text_lines``), are joined with newlines and sent as UTF-8
    ``text/plain`` base64 data.
    """
    first = first_value(values)
    if first is None:
        return None
    obxs = _document_segments(first, env)
    env.seen.update(field_read(obx, number) for obx in obxs for number in (2, 5))
    eds = [obx for obx in obxs if obx.value(2) == "ED"]
    if eds:
        if len(obxs) > 1:
            env.findings.append(
                Finding(
                    severity="warning",
                    code="extra-document-content",
                    location=env.location(first),
                    message="the document has other OBX parts besides its ED; only the first "
                    "ED was kept as the attachment",
                )
            )
        reps = eds[0].repetitions(5)
        ed = SourceValue(reps[0], eds[0], first.path, 1) if reps else None
        return fn_ed_attachment([ed], env, None)
    lines: list[str] = []
    for obx in obxs:
        if obx.value(2) in _TEXT_TYPES:
            lines.extend(
                formatted_text(rep, obx.delims).rstrip()
                for rep in obx.repetitions(5)
                if rep != '""'
            )
    text = "\n".join(lines).strip("\n")
    if not text.strip():
        return None
    raw = text.encode("utf-8")
    data = base64.b64encode(raw).decode("ascii")
    return {"contentType": "text/plain; charset=utf-8", "data": data, "size": len(raw)}


TRANSFORMS: dict[str, Transform] = {
    "order_identifier": Transform(
        fn_order_identifier, "Identifier", sources=8, args=_OrderArgs, optional=True
    ),
    "ei_identifier": Transform(fn_ei_identifier, "Identifier", args=_EiArgs),
    "document_attachment": Transform(fn_document_attachment, "Attachment"),
}
"""The orders transforms by the name a rule's ``function:`` uses."""
