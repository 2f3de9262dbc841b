"""Names and identifiers: XPN/XCN names, CX/XCN identifiers, XAD addresses, XTN telecom and PL
locations (v2.5.1 ch. 2A) to FHIR."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.envelope import Finding
from broker.identity import (
    PATIENT_SYSTEMS,
    CxSystem,
    cx_system,
    local_code_system,
)
from broker.identity import slug as _slug
from broker.mapping.transforms.base import Env, SourceValue, Transform, first_value
from broker.mapping.transforms.codes import is_code
from broker.mapping.transforms.strings import plain_text

__all__ = [
    "CIN_SYSTEM",
    "TRANSFORMS",
    "V2_0203",
    "V2_0203_CODES",
    "fn_cx_identifier",
    "fn_joined_identifier",
    "fn_pl_location",
    "fn_xad_address",
    "fn_xcn_identifier",
    "fn_xcn_name",
    "fn_xpn_name",
    "fn_xtn_telecom",
    "pl_display",
]


CIN_SYSTEM = "https://passerelle.ma/fhir/sid/cin"


V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


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
    v = first_value(values)
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
    v = first_value(values)
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
    v = first_value(values)
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


# HL7 table 0190 address type → FHIR address use/type (v2-to-FHIR IG XAD map).
_ADDRESS_USE = {"H": "home", "B": "work", "O": "work", "C": "temp", "BA": "old"}


def fn_xad_address(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """XAD → Address: -1 street, -2 other designation, -3 city, -4 state, -5 zip, -6 country,
    -7 address type (table 0190)."""
    v = first_value(values)
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
    v = first_value(values)
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
    v = first_value(values)
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
    v = first_value(values)
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


TRANSFORMS: dict[str, Transform] = {
    "xpn_name": Transform(fn_xpn_name, "HumanName"),
    "xcn_name": Transform(fn_xcn_name, "HumanName"),
    "xcn_identifier": Transform(fn_xcn_identifier, "Identifier"),
    "cx_identifier": Transform(fn_cx_identifier, "Identifier", args=_CxArgs),
    "joined_identifier": Transform(fn_joined_identifier, "Identifier", sources=4, args=_JoinedArgs),
    "xad_address": Transform(fn_xad_address, "Address"),
    "xtn_telecom": Transform(fn_xtn_telecom, "ContactPoint"),
    "pl_location": Transform(fn_pl_location, "EncounterLocation"),
}
"""The names transforms by the name a rule's ``function:`` uses."""
