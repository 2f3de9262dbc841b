"""Outbound transforms: one canonical FHIR element to one escaped ER7 field repetition."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from broker.mapping.transforms.base import OutboundTransform
from broker.mapping.transforms.codes import CODING_SYSTEMS, UCUM
from broker.mapping.transforms.names import CIN_SYSTEM
from broker.mapping.transforms.observations import ED_MIME
from broker.parsing.hl7v2 import Delimiters, escape

__all__ = [
    "LOCAL_CODING_SYSTEM",
    "OUTBOUND",
    "out_ce",
    "out_cwe",
    "out_cx",
    "out_date",
    "out_datetime",
    "out_ed",
    "out_number",
    "out_obx_sub_id",
    "out_pl",
    "out_reference_range",
    "out_sn",
    "out_string",
    "out_units",
    "out_xad",
    "out_xcn",
    "out_xpn",
    "out_xtn",
    "out_xtn_unformatted",
    "pl_parts",
]


def _join(parts: Sequence[str], sep: str) -> str:
    end = len(parts)
    while end and not parts[end - 1]:
        end -= 1
    return sep.join(parts[:end])


def _components(parts: list[str], d: Delimiters) -> str:
    """``parts`` escaped and joined as components, without the trailing empty ones."""
    plain = "".join(parts)
    # Nearly always nothing to escape: one search of the whole instead of one per part.
    if escape(plain, d) != plain:
        parts = [escape(p, d) for p in parts]
    return _join(parts, d.component)


def out_string(value: Any, d: Delimiters) -> str:
    """A FHIR primitive → an escaped ER7 value."""
    return escape(str(value), d) if value is not None else ""


def out_date(value: Any, d: Delimiters) -> str:
    """FHIR date/dateTime → HL7 DT (``YYYY[MM[DD]]``)."""
    return str(value)[:10].replace("-", "") if value else ""


_TIME = re.compile(r"^(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})?$")


def out_datetime(value: Any, d: Delimiters) -> str:
    """FHIR dateTime → HL7 DTM ``YYYYMMDDHHMMSS+ZZZZ``."""
    if not value:
        return ""
    text = str(value)
    day, _, rest = text.partition("T")
    out = day.replace("-", "")
    if rest:
        m = _TIME.match(rest)
        if m:
            hours, minutes, seconds, zone = m.groups("")
            out += hours + minutes + seconds
            out += "+0000" if zone == "Z" else zone.replace(":", "")
    return out


def out_cx(value: Any, d: Delimiters) -> str:
    """Identifier → CX: -1 value, -4 assigning authority, -5 type code (table 0203)."""
    if not isinstance(value, dict) or not value.get("value"):
        return ""
    authority = (value.get("assigner") or {}).get("display", "")
    codings = (value.get("type") or {}).get("coding") or [{}]
    type_code = codings[0].get("code", "")
    if value.get("system") == CIN_SYSTEM and type_code in ("", "NI"):
        # FHIR types the CIN NI (v2-0203 has no per-country NNxxx code); in HL7 v2 it is NNMAR,
        # table 0203 NNxxx with Morocco's ISO 3166 code, as the senders write it.
        authority, type_code = authority or "MA", "NNMAR"
    return _components([value["value"], "", "", authority, type_code], d)


_USE_TO_0200 = {
    "official": "L",
    "usual": "D",
    "maiden": "M",
    "nickname": "N",
    "old": "B",
    "anonymous": "S",
    "temp": "T",
}


def out_xpn(value: Any, d: Delimiters) -> str:
    """HumanName → XPN: -1 family, -2 given, -3 further given, -4 suffix, -5 prefix, -7 type."""
    if not isinstance(value, dict):
        return ""
    given = value.get("given") or []
    parts = [
        value.get("family", ""),
        given[0] if given else "",
        " ".join(given[1:]),
        " ".join(value.get("suffix") or []),
        " ".join(value.get("prefix") or []),
        "",
        _USE_TO_0200.get(value.get("use", ""), ""),
    ]
    return _components(parts, d)


def out_xad(value: Any, d: Delimiters) -> str:
    """Address → XAD: -1/-2 lines, -3 city, -4 state, -5 postal code, -6 country."""
    if not isinstance(value, dict):
        return ""
    lines = value.get("line") or []
    parts = [
        lines[0] if lines else "",
        " ".join(lines[1:]),
        value.get("city", ""),
        value.get("state", ""),
        value.get("postalCode", ""),
        value.get("country", ""),
        {"home": "H", "work": "B", "temp": "C", "old": "BA"}.get(value.get("use", ""), ""),
    ]
    return _components(parts, d)


def out_xtn(value: Any, d: Delimiters) -> str:
    """ContactPoint → XTN: -1 value, -2 use (table 0201), -3 equipment (table 0202), -4 e-mail."""
    if not isinstance(value, dict) or not value.get("value"):
        return ""
    use = {"home": "PRN", "work": "WPN", "mobile": "PRN"}.get(value.get("use", ""), "")
    system = value.get("system", "phone")
    if system == "email":
        return _join(["", "NET", "Internet", escape(value["value"], d)], d.component)
    equipment = (
        "CP" if value.get("use") == "mobile" else {"fax": "FX", "pager": "BP"}.get(system, "PH")
    )
    return _join([escape(value["value"], d), use, equipment], d.component)


def out_xtn_unformatted(value: Any, d: Delimiters) -> str:
    """ContactPoint → XTN without XTN-1, which v2.6 drops and v2.7 withdraws (§2A.89): a telephone
    number goes to XTN-12 unformatted telephone number, as sent (never split into XTN-5..7
    guesses); -2 use, -3 equipment and -4 e-mail as ``xtn``.
    """
    text = out_xtn(value, d)
    if not text or not isinstance(value, dict) or value.get("system") == "email":
        return text
    parts = text.split(d.component)
    number, parts[0] = parts[0], ""
    parts += [""] * (11 - len(parts)) + [number]
    return d.component.join(parts)


def out_obx_sub_id(value: Any, d: Delimiters) -> str:
    """Observation → OBX-4 observation sub-id, from the identifier ``joined_identifier`` built.

    The inbound ORU mapping identifies a result by its order number, OBR-4.1, OBX-1, OBX-3.1 and
    OBX-4 joined with ``-`` (``LAB-60311-GLU-1-2345-7-1``, ``order_identifier``); the sub-id is
    what follows the OBX-3 code, which is the
    Observation's first coding. Empty when the Observation has no such identifier (a result
    from FHIR input) or none follows the code.
    """
    if not isinstance(value, dict):
        return ""
    codings = (value.get("code") or {}).get("coding") or [{}]
    code = str(codings[0].get("code", "")) if isinstance(codings[0], dict) else ""
    if not code:
        return ""
    for ident in value.get("identifier") or []:
        if not isinstance(ident, dict) or "/sid/lab-result/" not in str(ident.get("system")):
            continue
        joined = str(ident.get("value", ""))
        start = len(code) + 1 if joined.startswith(f"{code}-") else None
        if start is None:
            at = joined.find(f"-{code}-")
            start = at + len(code) + 2 if at >= 0 else None
        if start is not None:
            return escape(joined[start:], d)
    return ""


_MIME_ED = {mime: pair for pair, mime in reversed(ED_MIME.items())}


# MIME top-level types → HL7 table 0191 type of referenced data (ED-2).
_MIME_TOP_0191 = {"application": "AP", "image": "IM", "audio": "AU", "text": "TEXT"}


def out_ed(value: Any, d: Delimiters) -> str:
    """Attachment with data → ED (OBX-5 when OBX-2 is ED): ^type^subtype^Base64^data.

    ED-2 type of data (table 0191) and ED-3 subtype (table 0291) from contentType, ED-4 is
    always Base64 (table 0299), the data as the Attachment holds it; the inbound
    ``ed_attachment`` read backwards. Empty when the Attachment has no data (a URL only).
    """
    if not isinstance(value, dict) or not value.get("data"):
        return ""
    mime = str(value.get("contentType", "application/octet-stream")).split(";")[0].strip().lower()
    top, _, sub = mime.partition("/")
    kind, subtype = _MIME_ED.get(mime) or (_MIME_TOP_0191.get(top, top), sub.upper())
    parts = ["", kind, subtype, "Base64", "".join(str(value["data"]).split())]
    return d.component.join(escape(p, d) for p in parts)


def out_pl(value: Any, d: Delimiters) -> str:
    """Encounter.location → PL-1..3 from the display the inbound mapping wrote."""
    if not isinstance(value, dict):
        return ""
    display = str((value.get("location") or {}).get("display", ""))
    return _components(pl_parts(display), d)


_ROOM_BED = re.compile(r"(?:(.*?), )?room (.*?)(?:, bed (.*))?")
_BED = re.compile(r"(?:(.*?), )?()bed (.*)")


def pl_parts(display: str) -> list[str]:
    """PL-1..3 from a location display: the inverse of ``pl_display``.

    A display written by another system (FHIR input: ``Cardiologie B``) is the point of care.
    """
    poc, room, bed = display, "", ""
    m = _ROOM_BED.fullmatch(display) or _BED.fullmatch(display)
    if m:
        poc, room, bed = m.group(1) or "", m.group(2) or "", m.group(3) or ""
    return [poc, room, bed]


def out_xcn(value: Any, d: Delimiters) -> str:
    """Practitioner (or a Reference with an identifier) → XCN: -1 id, -2 family, -3 given."""
    if not isinstance(value, dict):
        return ""
    identifiers = value.get("identifier") or []
    ident = identifiers[0] if isinstance(identifiers, list) and identifiers else identifiers
    names = value.get("name") or [{}]
    name = names[0] if isinstance(names, list) else {}
    given = name.get("given") or []
    parts = [
        ident.get("value", "") if isinstance(ident, dict) else "",
        name.get("family", ""),
        given[0] if given else "",
    ]
    return _components(parts, d)


# The first name wins: SCT, not the older SNM, for SNOMED CT.
_REVERSE_CODING_SYSTEMS = {uri: name for name, uri in reversed(CODING_SYSTEMS.items())}


# FHIR code system URIs with no entry in CODING_SYSTEMS → HL7 table 0396 coding-system names.
# v3 ObservationInterpretation codes are table 0078's own (the inbound table maps them 1:1).
_OUT_CODING_SYSTEMS = {
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation": "HL70078",
    "https://passerelle.ma/fhir/CodeSystem/lab-local": "L",
}


_LOCAL_CODE_URN = re.compile(r"^urn:passerelle:adapter:[^:]+:code:(.+)$")


_FIELD_SLUG = re.compile(r"^[a-z][a-z0-9]{2}-\d+(?:-\d+)?$")


LOCAL_CODING_SYSTEM = "L"
"""HL7 table 0396 ``L``, local general code: CWE-3 of a Coding that has no system."""


def _coding_system_name(coding: dict[str, Any]) -> str:
    system = str(coding.get("system", ""))
    if not system:
        # codeable_concept leaves the system out for local names (L, 99zzz) and an empty CWE-3;
        # from v2.7 CWE-3 is required when CWE-1 is valued (§2A.13), so say "local".
        return LOCAL_CODING_SYSTEM if coding.get("code") else ""
    name = _REVERSE_CODING_SYSTEMS.get(system) or _OUT_CODING_SYSTEMS.get(system, "")
    if name:
        return name
    local = _LOCAL_CODE_URN.match(system)
    if local:
        # identity.local_code_system: named by the sender's coding system (99zzz), else by field.
        name = local.group(1).upper() if not _FIELD_SLUG.match(local.group(1)) else "L"
    if not name and system.startswith("http://terminology.hl7.org/CodeSystem/v2-"):
        name = "HL7" + system.rsplit("-", 1)[1]
    return name


def _triplet(coding: dict[str, Any], text: str) -> list[str]:
    code = str(coding.get("code", ""))
    if not code:
        return ["", str(coding.get("display", "") or text), ""]
    return [code, str(coding.get("display", "") or text), _coding_system_name(coding)]


def _coded(value: dict[str, Any], text: str) -> list[str]:
    codings = [c for c in (value.get("coding") or [value]) if isinstance(c, dict)]
    parts = _triplet(codings[0], text) if codings else ["", text, ""]
    alternate = next((c for c in codings[1:] if c.get("code")), None)
    if alternate is not None and parts[0]:
        parts += _triplet(alternate, "")
    return parts


def out_ce(value: Any, d: Delimiters) -> str:
    """CodeableConcept or Coding → CE: -1..3 the first coding, -4..6 the second.

    CE-3 (HL7 table 0396) is the coding system's HL7 name; a coding without a system, which
    is how codeable_concept keeps a local code (``L``, ``99zzz``), is written as ``L``. CE-2 is
    the display, else the concept's text; a concept with only text is ``^text``.
    """
    if not isinstance(value, dict):
        return ""
    parts = _coded(value, str(value.get("text", "")))
    return _components(parts, d)


def out_cwe(value: Any, d: Delimiters) -> str:
    """CodeableConcept or Coding → CWE: as CE, with the concept's text as CWE-9 original text
    when it has a coding too (the inbound codeable_concept reads CWE-9 into text)."""
    if not isinstance(value, dict):
        return ""
    text = str(value.get("text", ""))
    if not text or not value.get("coding"):
        return out_ce(value, d)
    parts = _coded(value, "")
    parts += [""] * (8 - len(parts)) + [text]
    return _components(parts, d)


def out_number(value: Any, d: Delimiters) -> str:
    """A FHIR decimal or integer → HL7 NM: digits and one point, never an exponent (§2A.47)."""
    # JSON numbers are nearly always already NM as Python writes them (0.9 -> 0.2 µs a value).
    if type(value) is int:
        return str(value)
    if type(value) is float:
        text = str(value)
        if "e" not in text and "n" not in text:  # not 1e-07, inf or nan
            return text
    if isinstance(value, bool) or not isinstance(value, int | float | str) or value == "":
        return ""
    try:
        text = format(Decimal(str(value)), "f")
    except ArithmeticError:
        return ""
    return text


def out_units(value: Any, d: Delimiters) -> str:
    """Quantity (or a Range's low/high) → OBX-6 CE/CWE: ``code^unit^UCUM`` or the unit alone."""
    if not isinstance(value, dict):
        return ""
    if "value" not in value and ("low" in value or "high" in value):
        value = value.get("low") or value.get("high") or {}
    unit, code = value.get("unit", ""), value.get("code", "")
    if code and value.get("system") == UCUM:
        return _join([escape(code, d), escape(unit or code, d), "UCUM"], d.component)
    # A unit without a code system is text (CE/CWE-2): an identifier would need CWE-3 (v2.7+).
    return _join(["", escape(unit or code, d)], d.component)


def out_reference_range(value: Any, d: Delimiters) -> str:
    """ObservationReferenceRange → OBX-7: ``low-high``, ``>low``, ``<high`` or its text (§7.4.2.7)."""
    if not isinstance(value, dict):
        return ""
    low = out_number((value.get("low") or {}).get("value"), d)
    high = out_number((value.get("high") or {}).get("value"), d)
    if low and high:
        return f"{low}-{high}"
    if high:
        return f"<{high}"
    if low:
        return f">{low}"
    return escape(str(value.get("text", "")), d)


def out_sn(value: Any, d: Delimiters) -> str:
    """Quantity with a comparator, Range or Ratio → SN (v2.5.1 §2A.75): comparator^num1^sep^num2.

    ``<^5`` (a bounded value), ``^3.5^-^5.1`` (a range; ``>=^3.5`` or ``<=^5.1`` when open),
    ``^1^:^128`` (a ratio).
    """
    if not isinstance(value, dict):
        return ""
    if "numerator" in value or "denominator" in value:
        num = out_number((value.get("numerator") or {}).get("value"), d)
        den = out_number((value.get("denominator") or {}).get("value"), d)
        return _join(["", num, ":", den], d.component) if num and den else ""
    if "low" in value or "high" in value:
        low = out_number((value.get("low") or {}).get("value"), d)
        high = out_number((value.get("high") or {}).get("value"), d)
        if low and high:
            return _join(["", low, "-", high], d.component)
        if low:
            return _join([escape(">=", d), low], d.component)
        return _join([escape("<=", d), high], d.component) if high else ""
    number = out_number(value.get("value"), d)
    if not number:
        return ""
    return _join([escape(str(value.get("comparator", "")), d), number], d.component)


OUTBOUND: dict[str, OutboundTransform] = {
    "string": out_string,
    "date": out_date,
    "datetime": out_datetime,
    "cx": out_cx,
    "xpn": out_xpn,
    "xad": out_xad,
    "xtn": out_xtn,
    "xtn_unformatted": out_xtn_unformatted,
    "obx_sub_id": out_obx_sub_id,
    "ed": out_ed,
    "pl": out_pl,
    "xcn": out_xcn,
    "ce": out_ce,
    "cwe": out_cwe,
    "number": out_number,
    "units": out_units,
    "reference_range": out_reference_range,
    "sn": out_sn,
}
"""Outbound transforms by the name used in ``function:`` of ``mappings/out`` files."""
