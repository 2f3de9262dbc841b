"""Named transforms that mapping rules call with ``function:``: HL7 v2 data types to FHIR and back.

Inbound transforms take the source values of one rule (one ``SourceValue`` per source path, or
``None`` when the path is empty), the per-message ``Env`` and the rule's validated ``args``, and
return FHIR JSON data, or ``None`` to leave the element out. They never return invalid FHIR:
a value that cannot be converted is dropped with a ``Finding`` that names the location and
never contains the value.

Outbound transforms take one canonical element and return one ER7 field repetition, already
escaped. Data-type references are v2.5.1 ch. 2A; FHIR mappings follow the HL7 v2-to-FHIR IG
(``https://build.fhir.org/ig/HL7/v2-to-fhir/``) data-type maps.
"""

from __future__ import annotations

import base64
import binascii
import csv
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker.envelope import Finding
from broker.identity import (
    PATIENT_SYSTEMS,
    CxSystem,
    IdentifierSystem,
    cx_system,
    local_code_system,
)
from broker.identity import slug as _slug
from broker.parsing.hl7v2 import Delimiters, Message, Path, Segment, escape, unescape
from broker.settings import BASE_MAPPINGS_DIR

__all__ = [
    "INBOUND",
    "OUTBOUND",
    "Env",
    "InboundTransform",
    "OutboundTransform",
    "SourceValue",
    "hl7_date",
    "hl7_datetime",
]

CIN_SYSTEM = "https://passerelle.ma/fhir/sid/cin"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

# HL7 coding system names (table 0396) → FHIR code system URIs (v2-to-FHIR IG, CWE map;
# terminology.hl7.org "External code systems"). ``HL7nnnn`` names are handled apart (v2-nnnn).
CODING_SYSTEMS: dict[str, str] = {
    "LN": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "MVX": "http://hl7.org/fhir/sid/mvx",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "NCIT": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
    "UCUM": UCUM,
    "ISO+": UCUM,
}

_CODING_SYSTEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+_.-]{0,19}$")
# HL7 table 0396 names of local coding systems: "L" (local general code), "99zzz" (a site's).
_LOCAL_CODING_SYSTEM = re.compile(r"^(?:L|99[A-Za-z0-9]*)$")

# HL7 table 0203 identifier types (terminology.hl7.org CodeSystem v2-0203) that CX-5, XCN-13 and
# EI types use here; another code is the sender's own and gets the adapter's namespace.
V2_0203_CODES = frozenset(
    [
        "AN",
        "BA",
        "BR",
        "BRN",
        "DL",
        "DN",
        "EI",
        "EN",
        "FILL",
        "MA",
        "MB",
        "MC",
        "MD",
        "MR",
        "MRT",
        "NH",
        "NI",
        "NII",
        "NIIP",
        "NPI",
        "PEN",
        "PI",
        "PLAC",
        "PN",
        "PPN",
        "PRN",
        "PT",
        "RRI",
        "SN",
        "SR",
        "SS",
        "TAX",
        "U",
        "UPIN",
        "VN",
        "WC",
        "XX",
        "ACSN",
    ]
)
# Table 0203 NNxxx (national person identifier, xxx an ISO 3166 country code): terminology.hl7.org
# holds only the placeholder "NNxxx", not each country's code, so a CIN typed NNMAR is written
# as NI (national unique individual identifier) with the country in the system URI.
_NATIONAL_PERSON = re.compile(r"^NN[A-Z]{3}$")

# Common laboratory units that are already valid UCUM codes when the sender leaves CE-3 empty.
UCUM_UNITS = frozenset(
    {
        "%",
        "g/L",
        "g/dL",
        "mg/dL",
        "mg/L",
        "mmol/L",
        "umol/L",
        "nmol/L",
        "pmol/L",
        "mol/L",
        "U/L",
        "IU/L",
        "[IU]/L",
        "mL/min",
        "10*9/L",
        "10*12/L",
        "10*3/uL",
        "10*6/uL",
        "fL",
        "pg",
        "s",
        "min",
        "h",
        "mm[Hg]",
        "kg",
        "g",
        "cm",
        "m",
        "Cel",
        "/min",
        "mEq/L",
        "ng/mL",
        "ug/L",
        "mIU/L",
        "mU/L",
        "mm/h",
        "L/L",
        "1",
    }
)


class SourceValue:
    """One value read by a rule's source path: a field repetition or one of its components."""

    __slots__ = ("delims", "path", "raw", "rep", "segment")

    def __init__(self, raw: str, segment: Segment, path: Path, rep: int) -> None:
        self.raw = raw
        self.segment = segment
        self.path = path
        self.rep = rep
        self.delims: Delimiters = segment.delims

    @property
    def text(self) -> str:
        """The whole value, unescaped (components and all)."""
        return unescape(self.raw, self.delims)

    def comp_raw(self, number: int) -> str:
        """Component ``number`` as sent (escapes and subcomponents kept); ``""`` when absent."""
        comps = self.raw.split(self.delims.component)
        return comps[number - 1] if number <= len(comps) else ""

    def comp(self, number: int, sub: int = 1) -> str:
        """Component ``number`` (subcomponent ``sub``), unescaped; ``""`` when absent."""
        d = self.delims
        comps = self.raw.split(d.component)
        if number > len(comps):
            return ""
        value = comps[number - 1]
        if d.subcomponent in value or sub > 1:
            subs = value.split(d.subcomponent)
            value = subs[sub - 1] if sub <= len(subs) else ""
        return unescape(value, d) if d.escape in value else value


def field_read(segment: Segment, number: int, *, one_repetition: bool = False) -> int:
    """The key recording that field ``number`` of ``segment`` was read (all or one repetition).

    An int, not a (segment, number) tuple: a mapping run records hundreds of reads and ints do
    not load the cyclic garbage collector. Keys name segments by ``id()``, so they are
    compared with the message they were recorded for while it is alive (``MapResult.read``).
    """
    return id(segment) * 512 + (256 if one_repetition else 0) + number


class Env:
    """What a transform may use about the current message: context, findings and locations."""

    __slots__ = (
        "findings",
        "identifier_systems",
        "message",
        "received_at",
        "seen",
        "sender",
        "source",
        "timezone",
    )

    def __init__(
        self,
        message: Message,
        timezone: str,
        source: str,
        identifier_systems: Sequence[IdentifierSystem] = (),
        received_at: datetime | None = None,
    ) -> None:
        self.message = message
        self.received_at = received_at
        """When the broker received the message (``MapContext.received_at``): "now" for
        plausibility checks (a birth date in the future)."""
        self.timezone = timezone
        self.source = source
        self.identifier_systems = identifier_systems
        """The inbound adapter's ``identifier_systems`` (``broker.identity``)."""
        self.sender = message.msh.value(4)
        """MSH-4.1, the sending facility."""
        self.findings: list[Finding] = []
        self.seen: set[int] = set()
        """The fields read in this run, as ``field_read`` keys; a transform reading fields of
        segments other than its values' (an MDM document's later OBXs) adds them."""

    def location(self, value: SourceValue) -> str:
        """Name where ``value`` sits: ``PID-7``, ``OBX[3]-5``, ``PID-3(2)``; never the value."""
        p = value.path
        same = [s for s in self.message.segments if s.name == p.segment]
        where = p.segment
        if len(same) > 1:
            where += f"[{next(i for i, s in enumerate(same, 1) if s is value.segment)}]"
        where += f"-{p.field}"
        if value.rep > 1:
            where += f"({value.rep})"
        if p.component is not None:
            where += f".{p.component}"
        return where

    def warn(self, code: str, value: SourceValue, message: str) -> None:
        """Record a warning about ``value``; ``message`` must not contain the value."""
        self.findings.append(
            Finding(severity="warning", code=code, location=self.location(value), message=message)
        )


InboundTransform = Callable[[Sequence[SourceValue | None], Env, Any], Any]
"""An inbound transform: source values, the message's Env and validated args → FHIR data."""
OutboundTransform = Callable[[Any, Delimiters], str]
"""An outbound transform: one canonical element → one escaped ER7 field repetition."""


@dataclass(frozen=True)
class Transform:
    """A registered inbound transform and what it accepts.

    Attributes:
        fn: the function.
        returns: the FHIR type of what it returns, checked against the target element at load.
        sources: how many source paths it reads at most.
        args: the pydantic model its ``args:`` are validated against at load, if any.
    """

    fn: InboundTransform
    returns: str
    sources: int = 1
    args: type[BaseModel] | None = None
    optional: bool = False
    """Called even when the first source is empty (``concat`` joins what is present)."""


# --- dates and times (v2.5.1 §2A.21 DT, §2A.22 DTM) ---------------------------------------------

_DTM = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?)?)?)?)?"
    r"([+-]\d{4})?$"
)


@lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _offset(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def hl7_date(text: str) -> str | None:
    """Convert an HL7 DT/DTM to a FHIR ``date`` keeping its precision; ``None`` when invalid.

    A DTM's time part is dropped (PID-7 is often sent as DTM). Year 0000 and impossible
    calendar days are invalid; unusual but real dates (year 1013) are kept.
    """
    m = _DTM.match(text.strip())
    if not m:
        return None
    year, month, day = m.group(1), m.group(2), m.group(3)
    if year == "0000":
        return None
    try:
        if day:
            date(int(year), int(month), int(day))
            return f"{year}-{month}-{day}"
        if month:
            if not 1 <= int(month) <= 12:
                return None
            return f"{year}-{month}"
    except ValueError:
        return None
    return year


def hl7_datetime(text: str, timezone: str) -> str | None:
    """Convert an HL7 DTM to a FHIR ``dateTime``; a time always carries an offset.

    The offset is the one sent in the value, else the one in force in ``timezone`` at that
    local time (FHIR R4 §2.24.0.1 dateTime: "If hours and minutes are specified, a time zone
    SHALL be populated").
    """
    m = _DTM.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, tz = m.groups()
    day_part = hl7_date(f"{year}{month or ''}{day or ''}")
    if day_part is None:
        return None
    if hour is None:
        return day_part
    if not day:
        return None  # an hour without a day cannot be a FHIR dateTime
    h, mi, s = int(hour), int(minute or 0), int(second or 0)
    if h > 23 or mi > 59 or s > 59:
        return None
    if tz:
        offset_min = (1 if tz[0] == "+" else -1) * (int(tz[1:3]) * 60 + int(tz[3:5]))
        if int(tz[3:5]) > 59 or abs(offset_min) > 14 * 60:
            return None
    else:
        local = datetime(int(year), int(month), int(day), h, mi, s)
        delta = _zone(timezone).utcoffset(local) or timedelta(0)
        offset_min = round(delta.total_seconds() / 60)
    fraction = f".{frac}" if frac else ""
    return f"{day_part}T{h:02d}:{mi:02d}:{s:02d}{fraction}{_offset(offset_min)}"


def _first(values: Sequence[SourceValue | None]) -> SourceValue | None:
    return values[0] if values else None


class _DateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    birth: bool = False
    """A birth date (PID-7): a year before ``EARLIEST_BIRTH_YEAR`` or a day after the message
    was received is an ``implausible-date`` finding; the date, valid as a date, is kept."""


EARLIEST_BIRTH_YEAR = 1900
"""A birth date before this year is implausible for a living patient (docs/mappings.md)."""


def fn_date(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """DT/DTM → FHIR date (PID-7 → Patient.birthDate); with ``birth: true``, plausibility checked."""
    v = _first(values)
    if v is None:
        return None
    # TS (v2.3-v2.5.1) is DTM^degree of precision: the time is component 1.
    result = hl7_date(v.comp(1))
    if result is None:
        env.warn(
            "invalid-date",
            v,
            "the value is not a valid HL7 DT/DTM date "
            "(expected YYYY[MM[DD]] with a real calendar day); the element was left out",
        )
    elif isinstance(args, _DateArgs) and args.birth:
        _check_birth(result, v, env)
    return result


def _check_birth(result: str, v: SourceValue, env: Env) -> None:
    """An ``implausible-date`` warning for a birth before 1900 or after the message's arrival."""
    year = int(result[:4])
    received = env.received_at
    # A partial date (YYYY or YYYY-MM) is in the future only when all of it is.
    future = received is not None and result > received.date().isoformat()[: len(result)]
    if year < EARLIEST_BIRTH_YEAR:
        reason = f"the birth date is before {EARLIEST_BIRTH_YEAR}"
    elif future:
        reason = "the birth date is after the message was received"
    else:
        return
    env.warn(
        "implausible-date",
        v,
        f"{reason}; the date was kept as sent (valid as a date): check it with the sender",
    )


def fn_datetime(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """DTM → FHIR dateTime with the sender's offset (PV1-44 → Encounter.period.start)."""
    v = _first(values)
    if v is None:
        return None
    result = hl7_datetime(v.comp(1), env.timezone)
    if result is None:
        env.warn(
            "invalid-date",
            v,
            "the value is not a valid HL7 DTM (expected "
            "YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ]); the element was left out",
        )
    return result


# --- strings and codes --------------------------------------------------------------------------


def fn_string(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """ST/TX/FT/ID → FHIR string, as plain text (``plain_text``) and trimmed; ``None`` when blank."""
    v = _first(values)
    text = plain_text(v.raw, v.delims).strip() if v is not None else ""
    return text or None


_CODE = re.compile(r"^[^\s]+( [^\s]+)*$")


def is_code(text: str) -> bool:
    """Tell whether ``text`` is a valid FHIR ``code`` (no leading, trailing or double spaces)."""
    return bool(_CODE.match(text))


def fn_code(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """ID/IS or the first component of CWE → FHIR code (no inner whitespace runs)."""
    v = _first(values)
    if v is None:
        return None
    text = v.comp(1).strip()
    if not text:
        return None
    if not is_code(text):
        env.warn("invalid-code", v, "the value is not a valid FHIR code; the element was left out")
        return None
    return text


def fn_annotation(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """FT/TX comment (NTE-3) → FHIR Annotation."""
    text = fn_string(values, env, args)
    return {"text": text} if text else None


class _CodeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    systems: dict[str, str] = {}
    """Extra HL7 coding-system names → FHIR system URIs, on top of the built-in table."""


def coding_system(system_name: str, systems: dict[str, str] | None = None) -> str | None:
    """The FHIR system URI of an HL7 coding-system name (table 0396), or None when unknown."""
    system = (systems or {}).get(system_name) or CODING_SYSTEMS.get(system_name)
    if system is None and system_name.startswith("HL7") and system_name[3:].isdigit():
        system = f"http://terminology.hl7.org/CodeSystem/v2-{system_name[3:]}"
    return system


def _field_name(v: SourceValue) -> str:
    """``OBX-3``: the segment and field a value was read from, without instance numbers."""
    return f"{v.path.segment}-{v.path.field}"


def _coding(
    code: str, display: str, system_name: str, systems: dict[str, str], env: Env, v: SourceValue
) -> dict[str, Any]:
    coding: dict[str, Any] = {}
    system = coding_system(system_name, systems)
    if system is None:
        # A local code (L, 99zzz, none) or a system with no known URI: the adapter's namespace,
        # named by the sender's coding system, else by the field (identity.local_code_system).
        # A name that is no table 0396 name (a LOINC long name sent in CWE-3) says nothing.
        local = not _CODING_SYSTEM_NAME.match(system_name) or system_name == "L"
        system = local_code_system(env.source, _field_name(v) if local else system_name)
        if system_name and not _LOCAL_CODING_SYSTEM.match(system_name):
            env.findings.append(
                Finding(
                    severity="info",
                    code="unknown-coding-system",
                    location=env.location(v),
                    message="the coding system named here has no known URI; the code was "
                    "written in the adapter's local namespace (docs/mappings.md, Codes)",
                )
            )
    coding["system"] = system
    if code and is_code(code):
        coding["code"] = code
    if display:
        coding["display"] = display
    return coding


def fn_codeable_concept(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """CE/CWE → CodeableConcept: primary and alternate codings, text (v2-to-FHIR CWE map)."""
    v = _first(values)
    if v is None:
        return None
    systems = args.systems if isinstance(args, _CodeArgs) else {}
    codings = []
    for base in (1, 4):
        code, display = v.comp(base).strip(), v.comp(base + 1).strip()
        if code:
            codings.append(_coding(code, display, v.comp(base + 2).strip(), systems, env, v))
    text = v.comp(9).strip() or (v.comp(2).strip() if not codings else "")
    cc: dict[str, Any] = {}
    if codings:
        cc["coding"] = codings
    if text:
        cc["text"] = text
    return cc or None


# --- names, identifiers, addresses, telecom -----------------------------------------------------

# HL7 table 0200 name type → FHIR name-use (v2-to-FHIR IG ConceptMap "NameType").
_NAME_USE = {
    "L": "official",
    "D": "usual",
    "A": "usual",
    "M": "maiden",
    "N": "nickname",
    "B": "old",
    "S": "anonymous",
    "T": "temp",
    "C": "official",
}


def _human_name(
    family: str, given: list[str], suffix: str, prefix: str, type_code: str
) -> dict[str, Any] | None:
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    given = [g for g in given if g]
    if given:
        name["given"] = given
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    if not name:
        return None
    use = _NAME_USE.get(type_code)
    if use:
        name["use"] = use
    return name


def fn_xpn_name(values: Sequence[SourceValue | None], env: Env, args: Any) -> dict[str, Any] | None:
    """XPN → HumanName: XPN-1 family, -2 given, -3 further given, -4 suffix, -5 prefix, -7 use."""
    v = _first(values)
    if v is None:
        return None
    return _human_name(
        v.comp(1).strip(),
        [v.comp(2).strip(), v.comp(3).strip()],
        v.comp(4).strip(),
        v.comp(5).strip(),
        v.comp(7).strip(),
    )


def fn_xcn_name(values: Sequence[SourceValue | None], env: Env, args: Any) -> dict[str, Any] | None:
    """XCN → HumanName: XCN-2 family, -3 given, -4 further given, -5 suffix, -6 prefix."""
    v = _first(values)
    if v is None:
        return None
    return _human_name(
        v.comp(2).strip(),
        [v.comp(3).strip(), v.comp(4).strip()],
        v.comp(5).strip(),
        v.comp(6).strip(),
        "",
    )


class _CxArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    systems: list[CxSystem] = Field(default_factory=lambda: list(PATIENT_SYSTEMS))
    """Tried in order after the adapter's ``identifier_systems``; the first match gives
    Identifier.system. Left out: the national patient systems (``identity.PATIENT_SYSTEMS``)."""
    adapter_systems: bool = True
    """Whether the adapter's ``identifier_systems`` apply. Off for visit numbers (PV1-19): an
    entry naming only an assigning authority is meant for the patient's identifiers, and a
    visit number of that authority must not take the patient identifier's system."""


_DEFAULT_CX_ARGS = _CxArgs()


def _local_finding(env: Env, v: SourceValue) -> None:
    env.findings.append(
        Finding(
            severity="info",
            code="unknown-identifier-system",
            location=env.location(v),
            message="no identifier system is configured for this assigning authority and type; "
            "the adapter's local namespace is used (docs/adapters.md, identifier_systems)",
        )
    )


def fn_cx_identifier(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """CX → Identifier: CX-1 value, CX-4 assigning authority, CX-5 type (table 0203), CX-6 facility.

    The system is the adapter's ``identifier_systems`` match, else the rule's ``systems``
    (the national CIN and IPP by default), else the adapter's local namespace
    (``identity.local_system``) with a finding: every identifier has a system, so a FHIR
    server can find the resource again by it (``broker.identity``).
    """
    v = _first(values)
    if v is None:
        return None
    value = v.comp(1).strip()
    if not value:
        return None
    authority, type_code, facility = v.comp(4).strip(), v.comp(5).strip(), v.comp(6).strip()
    args = args if isinstance(args, _CxArgs) else _DEFAULT_CX_ARGS
    system, local = cx_system(
        adapter=env.source,
        adapter_rules=env.identifier_systems if args.adapter_systems else (),
        rules=args.systems,
        authority=authority,
        type_code=type_code,
        facility=facility,
        sender=env.sender,
    )
    if local:
        _local_finding(env, v)
    ident: dict[str, Any] = {"system": system, "value": value}
    identifier_type = _identifier_type(type_code, env, v)
    if identifier_type:
        ident["type"] = identifier_type
    if authority:
        ident["assigner"] = {"display": authority}
    return ident


def _identifier_type(type_code: str, env: Env, v: SourceValue) -> dict[str, Any] | None:
    """CX-5 (table 0203) → Identifier.type: v2-0203 when the code is HL7's, NNxxx as NI."""
    if not type_code or not is_code(type_code):
        return None
    if _NATIONAL_PERSON.match(type_code):
        return {"coding": [{"system": V2_0203, "code": "NI"}]}
    if type_code in V2_0203_CODES:
        return {"coding": [{"system": V2_0203, "code": type_code}]}
    system = local_code_system(env.source, f"{v.path.segment}-{v.path.field}.5")
    return {"coding": [{"system": system, "code": type_code}]}


class _JoinedArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    system: str
    """System URI; ``{sender}`` is replaced by the MSH-4.1 slug."""


def fn_joined_identifier(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """Identifier whose value joins the first components of several fields with ``-``.

    Used for business identifiers HL7 v2 spreads over fields, e.g. an Observation's
    OBR-3 (filler order number) + OBX-3 (code) + OBX-4 (sub-id), so that re-sending the same
    result updates the same Observation.
    """
    parts = [v.comp(1).strip() for v in values if v is not None]
    parts = [p for p in parts if p]
    if not parts or not isinstance(args, _JoinedArgs):
        return None
    system = args.system.replace("{sender}", _slug(env.sender) or "unknown")
    return {"system": system, "value": "-".join(parts)}


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


# HL7 table 0190 address type → FHIR address use/type (v2-to-FHIR IG XAD map).
_ADDRESS_USE = {"H": "home", "B": "work", "O": "work", "C": "temp", "BA": "old"}


def fn_xad_address(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """XAD → Address: -1 street, -2 other designation, -3 city, -4 state, -5 zip, -6 country,
    -7 address type (table 0190)."""
    v = _first(values)
    if v is None:
        return None
    address: dict[str, Any] = {}
    lines = [line for line in (v.comp(1).strip(), v.comp(2).strip()) if line]
    if lines:
        address["line"] = lines
    for number, key in ((3, "city"), (4, "state"), (5, "postalCode"), (6, "country")):
        text = v.comp(number).strip()
        if text:
            address[key] = text
    if not address:
        return None
    type_code = v.comp(7).strip()
    if type_code in _ADDRESS_USE:
        address["use"] = _ADDRESS_USE[type_code]
    elif type_code == "M":
        address["type"] = "postal"
    return address


# HL7 tables 0201 (use) and 0202 (equipment) → ContactPoint use/system (v2-to-FHIR XTN map).
_TELECOM_USE = {
    "PRN": "home",
    "ORN": "home",
    "WPN": "work",
    "VHN": "home",
    "EMR": "temp",
    "ASN": "work",
    "PRS": "mobile",
}
_TELECOM_SYSTEM = {
    "PH": "phone",
    "CP": "phone",
    "FX": "fax",
    "Internet": "email",
    "X.400": "email",
    "BP": "pager",
    "MD": "other",
    "TDD": "other",
    "TTY": "other",
}


def fn_xtn_telecom(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """XTN → ContactPoint: the number, -2 use, -3 equipment type (v2-to-FHIR XTN → ContactPoint).

    The number is XTN-1, else XTN-12 (unformatted telephone number: XTN-1 is withdrawn in
    v2.7, §2A.89, so v2.7+ senders fill XTN-12), else built from XTN-5 country code, -6 area
    code and -7 local number; an e-mail (XTN-3 Internet/X.400) is XTN-4 (or XTN-1).
    """
    v = _first(values)
    if v is None:
        return None
    equipment = v.comp(3).strip()
    email = v.comp(4).strip()
    if email or equipment in ("Internet", "X.400"):
        value = email or v.comp(1).strip()
        system = "email"
    else:
        parts = [v.comp(n).strip() for n in (5, 6, 7)]
        value = (
            v.comp(1).strip()
            or v.comp(12).strip()
            or (("+" if parts[0] else "") + "".join(parts) if parts[2] else "")
        )
        system = _TELECOM_SYSTEM.get(equipment, "phone")
    if not value:
        return None
    point: dict[str, Any] = {"system": system, "value": value}
    use = "mobile" if equipment == "CP" else _TELECOM_USE.get(v.comp(2).strip())
    if use:
        point["use"] = use
    return point


def fn_pl_location(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """PL → Encounter.location element: PL-1 point of care, -2 room, -3 bed as the display.

    The display reads as text, never as HL7 (``CARDIO^204^1`` → ``CARDIO, room 204, bed 1``):
    the point of care, then each part it has with its name, so the reverse mapping
    (``out_pl``) rebuilds PL-1..3 exactly, even with a part left empty.
    """
    v = _first(values)
    if v is None:
        return None
    # From v2.7 PL-1..3 are HD (namespace&universal id&type, as some senders already do in
    # 2.5): the name is the first subcomponent.
    parts = [" ".join(plain_text(v.comp(n), v.delims).split()) for n in (1, 2, 3)]
    if not any(parts):
        return None
    return {"location": {"display": pl_display(*parts)}}


def pl_display(point_of_care: str, room: str, bed: str) -> str:
    """The display of a PL location: ``CARDIO, room 204, bed 1`` (parts that are empty left out)."""
    labelled = [point_of_care] if point_of_care else []
    labelled += [f"{name} {part}" for name, part in (("room", room), ("bed", bed)) if part]
    return ", ".join(labelled)


def fn_xcn_identifier(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """XCN → Identifier from XCN-1 (id), XCN-9 (assigning authority) and XCN-13 (type).

    The system is the adapter's ``identifier_systems`` match for XCN-9/XCN-13, else the
    adapter's local namespace (``identity.local_system``): a practitioner is found again by it.
    """
    v = _first(values)
    if v is None:
        return None
    value = v.comp(1).strip()
    if not value:
        return None
    authority, type_code = v.comp(9).strip(), v.comp(13).strip()
    system, _ = cx_system(
        adapter=env.source,
        adapter_rules=env.identifier_systems,
        rules=(),
        authority=authority,
        type_code=type_code,
    )
    ident: dict[str, Any] = {"system": system, "value": value}
    if authority:
        ident["assigner"] = {"display": authority}
    return ident


# --- quantities (v2.5.1 §2A.48 NM, OBX-6 units as CE) --------------------------------------------

_NUMBER = re.compile(r"^\s*(<=|>=|<|>)?\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")


def _number(text: str) -> tuple[str | None, int | float] | None:
    m = _NUMBER.match(text)
    if not m:
        return None
    digits = m.group(2)
    number: int | float = float(digits) if "." in digits else int(digits)
    return m.group(1), number


def _units(units: SourceValue | None) -> dict[str, Any]:
    if units is None:
        return {}
    code, text, system = units.comp(1).strip(), units.comp(2).strip(), units.comp(3).strip()
    out: dict[str, Any] = {}
    if code or text:
        out["unit"] = text or code
    if code and is_code(code) and (system == "UCUM" or (not system and code in UCUM_UNITS)):
        out["system"] = UCUM
        out["code"] = code
    return out


def fn_quantity(values: Sequence[SourceValue | None], env: Env, args: Any) -> dict[str, Any] | None:
    """NM (OBX-5) + CE units (OBX-6) → Quantity, UCUM-coded when the unit is UCUM.

    With a third source, the observation's code (OBX-3), a LOINC code whose property the unit
    contradicts (a mass concentration in mmol/L) is a ``unit-mismatch`` warning
    (``check_unit``); the value is kept as sent.
    """
    v = values[0] if values else None
    if v is None:
        return None
    parsed = _number(v.text)
    if parsed is None:
        env.warn("invalid-number", v, "the value is not an HL7 NM number; the element was left out")
        return None
    comparator, number = parsed
    quantity: dict[str, Any] = {"value": number}
    if comparator:
        quantity["comparator"] = comparator
    units = values[1] if len(values) > 1 else None
    quantity.update(_units(units))
    code = values[2] if len(values) > 2 else None
    if units is not None and code is not None:
        check_unit(code, units, env)
    return quantity


def _table_csv(name: str) -> dict[str, str]:
    """A ``code,target`` table of the base mapping set (``mappings/tables/<name>.csv``)."""
    text = (BASE_MAPPINGS_DIR / "tables" / f"{name}.csv").read_text(encoding="utf-8")
    rows = csv.reader(line for line in text.splitlines() if not line.startswith("#"))
    next(rows, None)  # the header
    return {row[0]: row[1] for row in rows if len(row) == 2}


@lru_cache(maxsize=1)
def unit_properties() -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    """LOINC code → property, and UCUM unit → the properties it can express (mappings/tables)."""
    loinc = _table_csv("loinc-property")
    units = {unit: frozenset(p.split()) for unit, p in _table_csv("ucum-unit-property").items()}
    return loinc, units


def check_unit(code: SourceValue, units: SourceValue, env: Env) -> None:
    """A ``unit-mismatch`` warning when OBX-3's LOINC property and OBX-6's unit disagree.

    OBX-3's LOINC coding is its first or alternate triplet with coding system LN; a code or a
    unit missing from the tables (``loinc-property.csv``, ``ucum-unit-property.csv``) is not
    judged. The finding names the property and the unit's kind, never the value.
    """
    loinc_property, unit_property = unit_properties()
    unit = units.comp(1).strip()
    expressed = unit_property.get(unit)
    if expressed is None:
        return
    for base in (1, 4):
        if code.comp(base + 2).strip() != "LN":
            continue
        expected = loinc_property.get(code.comp(base).strip())
        if expected is not None and expected not in expressed:
            env.warn(
                "unit-mismatch",
                units,
                f"the LOINC code in OBX-3 measures {expected} ({_PROPERTY_NAMES.get(expected, '')}) "
                f"but the OBX-6 unit measures {'/'.join(sorted(expressed))}; the value was kept: "
                "the code or the unit is wrong (mappings/tables/loinc-property.csv)",
            )
            return


_PROPERTY_NAMES = {
    "MCnc": "mass concentration",
    "SCnc": "substance (molar) concentration",
    "NCnc": "number concentration",
    "CCnc": "catalytic concentration",
    "ACnc": "arbitrary concentration",
    "MFr": "mass fraction",
    "VFr": "volume fraction",
    "EntVol": "entitic volume",
    "EntMass": "entitic mass",
    "Pres": "pressure",
    "Vel": "velocity",
}


_RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*-\s*([+-]?\d+(?:\.\d+)?)\s*$")


def fn_reference_range(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """OBX-7 references range (``3.5-5.0``, ``<5``, ``>10``) + OBX-6 units → referenceRange.

    OBX-7 is ST, but some senders send it as a composite (``35-150^35^150``: the text, then
    low and high, as the v2.x SN/NR types): the first component is the range, and the
    others give low and high when it cannot be read. No HL7 syntax reaches ``text``.
    """
    v = values[0] if values else None
    if v is None:
        return None
    text = " ".join(plain_text(v.comp_raw(1), v.delims).split())
    units = _units(values[1] if len(values) > 1 else None)
    found: dict[str, Any] = {}
    m = _RANGE.match(text)
    parsed = _number(text)
    if m:
        low, high = _number(m.group(1)), _number(m.group(2))
        assert low is not None
        assert high is not None
        found = {"low": {"value": low[1], **units}, "high": {"value": high[1], **units}}
    elif parsed and parsed[0] in ("<", "<="):
        found = {"high": {"value": parsed[1], **units}}
    elif parsed and parsed[0] in (">", ">="):
        found = {"low": {"value": parsed[1], **units}}
    else:
        for key, number in (("low", _number(v.comp(2))), ("high", _number(v.comp(3)))):
            if number is not None and not number[0]:
                found[key] = {"value": number[1], **units}
    composite = v.delims.component in v.raw
    if text and (composite or not found):
        found["text"] = text
    return found or None


# --- strings: concat, split, regex, upper, lower, trim -------------------------------------------
# Each reads the whole value unescaped (read a component with a path such as PID-5.1) and gives a
# FHIR string, or None when nothing is left (FHIR strings are never empty).


def _text(v: SourceValue | None) -> str:
    return plain_text(v.raw, v.delims).strip() if v is not None else ""


class _ConcatArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    separator: str = " "
    """Put between the values present; empty values are skipped, never doubled separators."""


def fn_concat(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """Join the non-empty values of several source paths with ``separator``."""
    sep = args.separator if isinstance(args, _ConcatArgs) else " "
    parts = [t for t in (_text(v) for v in values) if t]
    return sep.join(parts) or None


class _SplitArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    separator: str = Field(min_length=1)
    index: int = 1
    """Which part, from 1; negative counts from the end (-1 is the last part)."""

    @field_validator("index")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("parts are numbered from 1 (or from -1 at the end); 0 is no part")
        return value


def fn_split(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """The ``index``-th part of the value split on ``separator``, trimmed; None when absent."""
    assert isinstance(args, _SplitArgs)  # validated at load: split requires args
    text = _text(_first(values))
    parts = text.split(args.separator) if text else []
    index = args.index - 1 if args.index > 0 else args.index
    if not -len(parts) <= index < len(parts):
        return None
    return parts[index].strip() or None


class _RegexArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    pattern: re.Pattern[str]
    """A Python regular expression, compiled at load; ``search`` finds the first match."""
    group: int | str = 1
    """The group to keep: a number (0 is the whole match) or a (?P<name>...) name."""

    @field_validator("pattern", mode="before")
    @classmethod
    def _compile(cls, value: Any) -> re.Pattern[str]:
        if not isinstance(value, str):
            raise ValueError("expected the pattern as a string")
        try:
            return re.compile(value)
        except re.error as exc:
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            msg = f"invalid regular expression: {exc.msg}{where}; expected a Python regex"
            raise ValueError(msg) from None

    @model_validator(mode="after")
    def _group_exists(self) -> _RegexArgs:
        group, pattern = self.group, self.pattern
        if isinstance(group, int) and not 0 <= group <= pattern.groups:
            msg = f"the pattern has {pattern.groups} group(s); expected group 0 to {pattern.groups}"
            raise ValueError(msg)
        if isinstance(group, str) and group not in pattern.groupindex:
            names = ", ".join(pattern.groupindex) or "(none)"
            msg = f"the pattern has no group named {group!r}; expected one of {names}"
            raise ValueError(msg)
        return self


def fn_regex(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """The ``group`` of the first match of ``pattern`` in the value; None when it does not match."""
    assert isinstance(args, _RegexArgs)  # validated at load: regex requires args
    text = _text(_first(values))
    found = args.pattern.search(text) if text else None
    if found is None:
        return None
    kept = found.group(args.group)
    return (kept.strip() or None) if kept else None


def fn_upper(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """The value in upper case, trimmed."""
    return _text(_first(values)).upper() or None


def fn_lower(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """The value in lower case, trimmed."""
    return _text(_first(values)).lower() or None


def fn_trim(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """The value without leading and trailing spaces, inner runs of spaces made single."""
    return " ".join(_text(_first(values)).split()) or None


# --- OBX-5 observation values by OBX-2 value type (v2.5.1 §7.4.2.2, ch. 2A) ----------------------
# The v2-to-FHIR IG OBX → Observation map picks value[x] by OBX-2; each function below serves the
# rows of one OBX-2 type and the ORU mapping guards each rule with ``when: {path: OBX-2, ...}``.

# FT formatting commands (v2.5.1 §2.7.6) that ``unescape`` keeps as sent: line and space commands
# become newlines and spaces; fill, indent and centring have no meaning in a FHIR string.
_FT_COMMAND = re.compile(r"\.(sp|sk|in|ti|ce|fi|nf)\s*([+-]?\d*)")


# Escapes plain text has no use for (v2.5.1 §2.7.2-§2.7.6): locally defined (\Zxx\), character
# set switches (\Cxxyy\, \Mxxyyzz\: the text is already decoded) and unknown formatting
# commands. Kept, they would reach FHIR strings as HL7 syntax.
_DROPPED_ESCAPE = re.compile(r"^(?:Z.*|C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{4,6}|\.(?!br$).*)$")


def plain_text(raw: str, delims: Delimiters) -> str:
    """One field repetition (or component) as sent → plain text for a FHIR string.

    Components and subcomponents are joined with a space (an ST field sent with carets, an RP
    pointer), FT formatting commands and escapes are decoded (``\\.br\\`` newline, ``\\H\\``
    and ``\\N\\`` dropped, ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` the delimiter they
    stand for, ``\\Xhh\\`` its bytes) and escapes with no meaning in plain text are dropped:
    no HL7 syntax reaches a FHIR string.
    """
    if delims.component not in raw and delims.subcomponent not in raw:
        return _formatted(raw, delims)
    parts = (p for c in raw.split(delims.component) for p in c.split(delims.subcomponent))
    return " ".join(t for t in (_formatted(p, delims).strip() for p in parts) if t)


def _formatted(raw: str, delims: Delimiters) -> str:
    """One FT/TX repetition as plain text: formatting commands decoded, then escapes resolved."""
    esc = delims.escape
    if not esc or esc not in raw:
        return raw
    e = re.escape(esc)

    def command(match: re.Match[str]) -> str:
        inner = _FT_COMMAND.fullmatch(match.group(1))
        if inner is None:
            if _DROPPED_ESCAPE.match(match.group(1)):
                return ""  # \Zxx\ local, \Cxxyy\ \Mxxyyzz\ character-set switches, \.xx\
            return match.group(0)  # \F\, \.br\, \Xhh\ ...: resolved by unescape below
        name, number = inner.groups()
        count = int(number) if number.lstrip("+-") else 1
        if name == "sp":
            return "\n" * (max(count, 1) + 1)  # end the line, then skip count blank lines
        if name == "sk":
            return " " * max(count, 1)
        if name == "ce":
            return "\n"
        return ""

    return unescape(re.sub(f"{e}([^{e}]*){e}", command, raw), delims)


def fn_text_lines(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """ST/TX/FT (OBX-5) → FHIR string: every repetition of the field, one line each.

    TX and FT send a long text as repetitions of OBX-5 (v2.5.1 §7.4.2.5); FT formatting
    commands (``\\.br\\``, ``\\.sp n\\``, ``\\.sk n\\``, ``\\.ce\\``, v2.5.1 §2.7.6) become
    newlines and spaces, highlighting and fill commands are dropped. Trailing blanks are trimmed.
    """
    v = _first(values)
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
    parsed = _number(text)
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
    v = _first(values)
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
    quantity.update(_units(values[1] if len(values) > 1 else None))
    return quantity


def fn_sn_range(values: Sequence[SourceValue | None], env: Env, args: Any) -> dict[str, Any] | None:
    """SN ``^num1^-^num2`` (OBX-5) + OBX-6 units → Range (v2-to-FHIR IG, SN with separator -)."""
    v = _first(values)
    if v is None:
        return None
    kind, _, n1, _, n2 = _sn_parts(v)
    if kind != "range":
        return None
    units = _units(values[1] if len(values) > 1 else None)
    return {"low": {"value": n1, **units}, "high": {"value": n2, **units}}


def fn_sn_ratio(values: Sequence[SourceValue | None], env: Env, args: Any) -> dict[str, Any] | None:
    """SN ``^num1^:^num2`` or ``^num1^/^num2`` (a titre 1:128) → Ratio of two unitless values."""
    v = _first(values)
    if v is None:
        return None
    kind, _, n1, _, n2 = _sn_parts(v)
    if kind != "ratio":
        return None
    return {"numerator": {"value": n1}, "denominator": {"value": n2}}


def fn_sn_text(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """An SN no Quantity, Range or Ratio can hold (``^2^+``, ``<>^5``) → its text, e.g. ``2+``."""
    v = _first(values)
    if v is None:
        return None
    kind = _sn_parts(v)[0]
    if kind != "text":
        return None
    parts = [v.comp(n).strip() for n in (1, 2, 3, 4)]
    return "".join(parts) or None


# HL7 table 0191 type of referenced data + table 0291 subtype → MIME type (BCP 13), for senders
# that use the HL7 codes instead of MIME names in ED-2/ED-3.
_ED_MIME = {
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
    return _ED_MIME.get((kind.upper(), subtype.upper()))


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
    v = _first(values)
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
    v = _first(values)
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
    v = _first(values)
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


# --- orders and documents: EI identifiers (v2.5.1 §2A.28), document bodies (ch. 9 MDM) ---------


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
    v = _first(values)
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
    first = _first(values)
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
                _formatted(rep, obx.delims).rstrip() for rep in obx.repetitions(5) if rep != '""'
            )
    text = "\n".join(lines).strip("\n")
    if not text.strip():
        return None
    raw = text.encode("utf-8")
    data = base64.b64encode(raw).decode("ascii")
    return {"contentType": "text/plain; charset=utf-8", "data": data, "size": len(raw)}


def fn_instant(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """DTM with at least a day and an hour → FHIR instant (SCH-11.4, TQ1-7 → Appointment.start).

    An instant is precise to the second with an offset: missing minutes and seconds are zero and
    the offset is the sender's (as ``datetime``). A date alone is left out with a finding.
    """
    v = _first(values)
    if v is None:
        return None
    result = hl7_datetime(v.comp(1), env.timezone)
    if result is None or "T" not in result:
        env.warn(
            "invalid-date",
            v,
            "the value is not an HL7 DTM with a time (expected YYYYMMDDHH[MM[SS]][+/-ZZZZ] for "
            "a FHIR instant); the element was left out",
        )
        return None
    return result


INBOUND: dict[str, Transform] = {
    "string": Transform(fn_string, "string"),
    "code": Transform(fn_code, "code"),
    "date": Transform(fn_date, "date", args=_DateArgs),
    "datetime": Transform(fn_datetime, "dateTime"),
    "annotation": Transform(fn_annotation, "Annotation"),
    "codeable_concept": Transform(fn_codeable_concept, "CodeableConcept", args=_CodeArgs),
    "xpn_name": Transform(fn_xpn_name, "HumanName"),
    "xcn_name": Transform(fn_xcn_name, "HumanName"),
    "xcn_identifier": Transform(fn_xcn_identifier, "Identifier"),
    "cx_identifier": Transform(fn_cx_identifier, "Identifier", args=_CxArgs),
    "joined_identifier": Transform(fn_joined_identifier, "Identifier", sources=4, args=_JoinedArgs),
    "order_identifier": Transform(
        fn_order_identifier, "Identifier", sources=8, args=_OrderArgs, optional=True
    ),
    "xad_address": Transform(fn_xad_address, "Address"),
    "xtn_telecom": Transform(fn_xtn_telecom, "ContactPoint"),
    "pl_location": Transform(fn_pl_location, "EncounterLocation"),
    "quantity": Transform(fn_quantity, "Quantity", sources=3),
    "reference_range": Transform(fn_reference_range, "ObservationReferenceRange", sources=2),
    "concat": Transform(fn_concat, "string", sources=9, args=_ConcatArgs, optional=True),
    "split": Transform(fn_split, "string", args=_SplitArgs),
    "regex": Transform(fn_regex, "string", args=_RegexArgs),
    "upper": Transform(fn_upper, "string"),
    "lower": Transform(fn_lower, "string"),
    "trim": Transform(fn_trim, "string"),
    "text_lines": Transform(fn_text_lines, "string"),
    "sn_quantity": Transform(fn_sn_quantity, "Quantity", sources=2),
    "sn_range": Transform(fn_sn_range, "Range", sources=2),
    "sn_ratio": Transform(fn_sn_ratio, "Ratio"),
    "sn_text": Transform(fn_sn_text, "string"),
    "ed_attachment": Transform(fn_ed_attachment, "Attachment"),
    "obx_other_value": Transform(fn_obx_other_value, "string", sources=2, args=_OtherValueArgs),
    "ei_identifier": Transform(fn_ei_identifier, "Identifier", args=_EiArgs),
    "document_attachment": Transform(fn_document_attachment, "Attachment"),
    "instant": Transform(fn_instant, "instant"),
    "notes": Transform(fn_notes, "string", args=_NotesArgs),
}
"""Inbound transforms by the name used in ``function:``."""


# --- outbound: canonical → ER7 -------------------------------------------------------------------


def _join(parts: Sequence[str], sep: str) -> str:
    out = list(parts)
    while out and not out[-1]:
        out.pop()
    return sep.join(out)


def out_string(value: Any, d: Delimiters) -> str:
    """A FHIR primitive → an escaped ER7 value."""
    return escape(str(value), d) if value is not None else ""


def out_date(value: Any, d: Delimiters) -> str:
    """FHIR date/dateTime → HL7 DT (``YYYY[MM[DD]]``)."""
    return str(value)[:10].replace("-", "") if value else ""


def out_datetime(value: Any, d: Delimiters) -> str:
    """FHIR dateTime → HL7 DTM ``YYYYMMDDHHMMSS+ZZZZ``."""
    if not value:
        return ""
    text = str(value)
    day, _, rest = text.partition("T")
    out = day.replace("-", "")
    if rest:
        m = re.match(r"^(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})?$", rest)
        if m:
            zone = m.group(4) or ""
            out += m.group(1) + m.group(2) + m.group(3)
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
    parts = [escape(value["value"], d), "", "", escape(authority, d), escape(type_code, d)]
    return _join(parts, d.component)


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
    return _join([escape(p, d) for p in parts], d.component)


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
    return _join([escape(p, d) for p in parts], d.component)


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


_MIME_ED = {mime: pair for pair, mime in reversed(_ED_MIME.items())}
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
    return _join([escape(p, d) for p in pl_parts(display)], d.component)


def pl_parts(display: str) -> list[str]:
    """PL-1..3 from a location display: the inverse of ``pl_display``.

    A display written by another system (FHIR input: ``Cardiologie B``) is the point of care.
    """
    poc, room, bed = display, "", ""
    m = re.fullmatch(r"(?:(.*?), )?room (.*?)(?:, bed (.*))?", display) or re.fullmatch(
        r"(?:(.*?), )?()bed (.*)", display
    )
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
    return _join([escape(p, d) for p in parts], d.component)


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
    local = _LOCAL_CODE_URN.match(system)
    if not name and local:
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
    return _join([escape(p, d) for p in parts], d.component)


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
    return _join([escape(p, d) for p in parts], d.component)


def out_number(value: Any, d: Delimiters) -> str:
    """A FHIR decimal or integer → HL7 NM: digits and one point, never an exponent (§2A.47)."""
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
