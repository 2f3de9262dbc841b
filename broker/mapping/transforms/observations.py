"""Observation values: OBX-5 by its OBX-2 value type (v2.5.1 §7.4.2.2, ch. 2A): FT/TX text,
SN structured numerics, ED attachments, other types and notes."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.envelope import Finding
from broker.mapping.transforms.base import Env, SourceValue, Transform, field_read, first_value
from broker.mapping.transforms.quantities import parse_number, quantity_units
from broker.mapping.transforms.strings import plain_text

__all__ = [
    "ED_MIME",
    "TRANSFORMS",
    "fn_ed_attachment",
    "fn_notes",
    "fn_obx_other_value",
    "fn_sn_quantity",
    "fn_sn_range",
    "fn_sn_ratio",
    "fn_sn_text",
    "fn_text_lines",
]


def fn_text_lines(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """ST/TX/FT (OBX-5) → FHIR string: every repetition of the field, one line each.

    TX and FT send a long text as repetitions of OBX-5 (v2.5.1 §7.4.2.5); FT formatting
    commands (``\\.br\\``, ``\\.sp n\\``, ``\\.sk n\\``, ``\\.ce\\``, v2.5.1 §2.7.6) become
    newlines and spaces, highlighting and fill commands are dropped. Trailing blanks are trimmed.
    """
    v = first_value(values)
    if v is None:
        return None
    # A path without (rep) reads repetition 1; the text is every repetition of that field.
    reps = v.segment.repetitions(v.path.field) if v.path.component is None else [v.raw]
    env.seen.add(field_read(v.segment, v.path.field))  # every repetition is read
    lines = [plain_text(rep, v.delims).rstrip() for rep in reps if rep != '""']
    return "\n".join(lines).strip("\n") or None


_SN_SEPARATORS = frozenset({"-", "+", "/", ".", ":"})


_SN_COMPARATORS = frozenset({"", "=", "<", ">", "<=", ">=", "<>"})


def _sn_number(text: str) -> int | float | None:
    parsed = parse_number(text)
    return parsed[1] if parsed is not None and parsed[0] is None else None


def _sn_parts(v: SourceValue) -> tuple[str, str, int | float | None, str, int | float | None]:
    """The SN components (v2.5.1 §2A.75): kind, comparator, num1, separator/suffix, num2.

    The kind is ``quantity`` (``<^5``, ``^5``), ``range`` (``^10^-^20``), ``ratio`` (``^1^:^128``,
    ``^1^/^2``), ``text`` (a suffix such as ``^2^+``, the ``<>`` comparator, or a comparator with a
    range) or ``invalid`` (a number that is not an HL7 NM, an unknown comparator or separator).
    """
    comparator, sep = v.comp(1).strip(), v.comp(3).strip()
    t1, t2 = v.comp(2).strip(), v.comp(4).strip()
    n1 = _sn_number(t1) if t1 else None
    n2 = _sn_number(t2) if t2 else None
    if (
        comparator not in _SN_COMPARATORS
        or (sep and sep not in _SN_SEPARATORS)
        or (t1 and n1 is None)
        or (t2 and n2 is None)
        or (not t1 and not t2)
    ):
        return "invalid", comparator, n1, sep, n2
    if not sep and not t2 and t1:
        return ("text" if comparator == "<>" else "quantity"), comparator, n1, sep, n2
    if t1 and t2 and comparator in ("", "="):
        if sep == "-":
            return "range", comparator, n1, sep, n2
        if sep in (":", "/"):
            return "ratio", comparator, n1, sep, n2
    return "text", comparator, n1, sep, n2


def fn_sn_quantity(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """SN ``comparator^num1`` (OBX-5) + OBX-6 units → Quantity with its comparator.

    Only this SN function reports an SN it cannot read (``invalid-number``), so a bad value gives
    one finding; the other shapes are left to ``sn_range``, ``sn_ratio`` and ``sn_text``.
    """
    v = first_value(values)
    if v is None:
        return None
    kind, comparator, n1, _, _ = _sn_parts(v)
    if kind == "invalid":
        env.warn(
            "invalid-number",
            v,
            "the value is not an HL7 SN (expected [comparator]^number[^separator^number]); "
            "the element was left out",
        )
        return None
    if kind != "quantity":
        return None
    quantity: dict[str, Any] = {"value": n1}
    if comparator not in ("", "="):
        quantity["comparator"] = comparator
    quantity.update(quantity_units(values[1] if len(values) > 1 else None))
    return quantity


def fn_sn_range(values: Sequence[SourceValue | None], env: Env, args: Any) -> dict[str, Any] | None:
    """SN ``^num1^-^num2`` (OBX-5) + OBX-6 units → Range (v2-to-FHIR IG, SN with separator -)."""
    v = first_value(values)
    if v is None:
        return None
    kind, _, n1, _, n2 = _sn_parts(v)
    if kind != "range":
        return None
    units = quantity_units(values[1] if len(values) > 1 else None)
    return {"low": {"value": n1, **units}, "high": {"value": n2, **units}}


def fn_sn_ratio(values: Sequence[SourceValue | None], env: Env, args: Any) -> dict[str, Any] | None:
    """SN ``^num1^:^num2`` or ``^num1^/^num2`` (a titre 1:128) → Ratio of two unitless values."""
    v = first_value(values)
    if v is None:
        return None
    kind, _, n1, _, n2 = _sn_parts(v)
    if kind != "ratio":
        return None
    return {"numerator": {"value": n1}, "denominator": {"value": n2}}


def fn_sn_text(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """An SN no Quantity, Range or Ratio can hold (``^2^+``, ``<>^5``) → its text, e.g. ``2+``."""
    v = first_value(values)
    if v is None:
        return None
    kind = _sn_parts(v)[0]
    if kind != "text":
        return None
    parts = [v.comp(n).strip() for n in (1, 2, 3, 4)]
    return "".join(parts) or None


# HL7 table 0191 type of referenced data + table 0291 subtype → MIME type (BCP 13), for senders
# that use the HL7 codes instead of MIME names in ED-2/ED-3.
ED_MIME = {
    ("AP", "PDF"): "application/pdf",
    ("AP", "RTF"): "application/rtf",
    ("AP", "XML"): "application/xml",
    ("AP", "OCTET-STREAM"): "application/octet-stream",
    ("IM", "JPEG"): "image/jpeg",
    ("IM", "PNG"): "image/png",
    ("IM", "GIF"): "image/gif",
    ("IM", "TIFF"): "image/tiff",
    ("TEXT", "PLAIN"): "text/plain",
    ("TEXT", "RTF"): "text/rtf",
    ("TEXT", "HTML"): "text/html",
    ("TEXT", "XML"): "text/xml",
    ("AU", "BASIC"): "audio/basic",
}


_MIME_TOP = frozenset({"application", "audio", "image", "model", "multipart", "text", "video"})


_MIME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")


_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def _mime(kind: str, subtype: str) -> str | None:
    if kind.lower() in _MIME_TOP and _MIME_PART.match(subtype):
        return f"{kind.lower()}/{subtype.lower()}"
    return ED_MIME.get((kind.upper(), subtype.upper()))


def _ed_bytes(encoding: str, data: str) -> bytes | None:
    """ED-5 data decoded by its ED-4 encoding (HL7 table 0299); None when it does not decode."""
    if encoding == "BASE64":
        packed = "".join(data.split())
        if not (_BASE64.match(packed) and len(packed) % 4 == 0):
            return None
        try:
            return base64.b64decode(packed, validate=True)
        except binascii.Error:
            return None
    if encoding == "HEX":
        try:
            return bytes.fromhex("".join(data.split()))
        except ValueError:
            return None
    if encoding in ("A", ""):
        return data.encode("utf-8")
    return None


def fn_ed_attachment(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """ED (OBX-5) → Attachment: ED-2/ED-3 give contentType, ED-4 the encoding of ED-5 data.

    ED-4 (HL7 table 0299) ``Base64`` data is kept as sent (whitespace removed), ``A`` (plain
    text) and ``Hex`` are re-encoded as base64 (v2-to-FHIR IG, OBX → DocumentReference map).
    Empty data, or data that does not decode, is left out with an ``invalid-attachment``
    finding; an unknown ED-2/ED-3 keeps the data as ``application/octet-stream`` (FHIR R4
    att-1: data needs a contentType) with an ``unknown-code`` finding.
    """
    v = first_value(values)
    if v is None:
        return None
    encoding = v.comp(4).strip().upper()
    data = v.comp(5)
    kind, subtype = v.comp(2).strip(), v.comp(3).strip()
    mime = _mime(kind, subtype) if kind else None
    raw = _ed_bytes(encoding, data) if data.strip() else None
    if not raw:
        env.warn(
            "invalid-attachment",
            v,
            "the ED data is empty or does not decode with its ED-4 encoding (expected A, Hex or "
            "Base64, HL7 table 0299); the element was left out",
        )
        return None
    if mime is None:
        mime = "application/octet-stream"
        env.warn(
            "unknown-code",
            v,
            "ED-2/ED-3 name no known MIME type (HL7 tables 0191, 0291); "
            "the attachment was kept as application/octet-stream",
        )
    return {
        "contentType": mime,
        "data": base64.b64encode(raw).decode("ascii"),
        "size": len(raw),
    }


class _OtherValueArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    handled: list[str] = Field(min_length=1)
    """The OBX-2 value types other rules of the mapping convert (HL7 table 0125)."""


def fn_obx_other_value(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """OBX-5 whose OBX-2 no other rule handles → its text, with an ``unsupported-value-type``.

    Reads ``[OBX-5, OBX-2]``: the value is kept as a FHIR string rather than dropped, and the
    finding names OBX-2 so the interface team can add a rule for that type (HL7 table 0125).
    """
    v = first_value(values)
    kind = values[1] if len(values) > 1 else None
    handled = args.handled if isinstance(args, _OtherValueArgs) else []
    if v is None or (kind is not None and kind.comp(1).strip() in handled):
        return None
    if kind is None:
        message = "OBX-5 has a value but OBX-2 gives no value type"
    else:
        message = "OBX-2 is a value type this mapping does not convert (HL7 table 0125)"
    env.warn(
        "unsupported-value-type",
        kind if kind is not None else v,
        f"{message}; OBX-5 was kept as text in valueString",
    )
    return fn_text_lines(values[:1], env, None)


class _NotesArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    between: list[str] = []
    """Segments that may stand between the anchor and its NTEs (SCH, TQ1, NTE: ``[TQ1]``)."""
    unmapped: bool = False
    """The NTEs have no FHIR element: report each with an ``unmapped-note`` warning and give
    nothing (R4 Patient has no note, and no standard extension carries one)."""


def fn_notes(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """The NTE segments that follow the anchor (the segment of the value read) → text.

    ``from: SCH-1`` reads the appointment's NTEs (v2.5.1 §10.4.1: SCH, TQ1, NTE), one line
    each (NTE-3 as plain text, every repetition), so Appointment.comment holds them. With
    ``unmapped: true``, each is reported instead (location ``NTE[n]-3``, never its text): a note
    FHIR has no place for is never dropped silently.
    """
    v = first_value(values)
    if v is None:
        return None
    between = args.between if isinstance(args, _NotesArgs) else []
    unmapped = isinstance(args, _NotesArgs) and args.unmapped
    segments = env.message.segments
    start = next((i for i, s in enumerate(segments) if s is v.segment), None)
    if start is None:
        return None
    lines: list[str] = []
    nth = sum(1 for s in segments[: start + 1] if s.name == "NTE")
    for segment in segments[start + 1 :]:
        if segment.name in between:
            continue
        if segment.name != "NTE":
            break
        nth += 1
        text = "\n".join(
            t for t in (plain_text(r, segment.delims).strip() for r in segment.repetitions(3)) if t
        )
        if not text:
            continue
        if unmapped:
            env.findings.append(
                Finding(
                    severity="warning",
                    code="unmapped-note",
                    location=f"NTE[{nth}]-3",
                    message=f"a note on the {v.path.segment} segment has no FHIR element to go to "
                    "(R4 Patient has no note); it was not delivered",
                )
            )
            continue
        env.seen.add(field_read(segment, 3))
        lines.append(text)
    return "\n".join(lines) or None


TRANSFORMS: dict[str, Transform] = {
    "text_lines": Transform(fn_text_lines, "string"),
    "sn_quantity": Transform(fn_sn_quantity, "Quantity", sources=2),
    "sn_range": Transform(fn_sn_range, "Range", sources=2),
    "sn_ratio": Transform(fn_sn_ratio, "Ratio"),
    "sn_text": Transform(fn_sn_text, "string"),
    "ed_attachment": Transform(fn_ed_attachment, "Attachment"),
    "obx_other_value": Transform(fn_obx_other_value, "string", sources=2, args=_OtherValueArgs),
    "notes": Transform(fn_notes, "string", args=_NotesArgs),
}
"""The observations transforms by the name a rule's ``function:`` uses."""
