"""Identity: the one definition of which identifier names a patient (or any resource) and how.

A FHIR server finds a resource again only by ``Identifier.system`` *and* ``value``: an
identifier without a system cannot be used in a conditional URL (FHIR R4 §3.1.0.4.3), so every
identifier Passerelle writes gets one, chosen in this order:

1. the inbound adapter's ``identifier_systems:`` (``IdentifierSystem`` rules: CX-4 assigning
   authority and/or CX-5 identifier type for HL7 v2, the sender's ``Identifier.system`` for
   FHIR input);
2. the mapping's own rules (the national CIN and IPP systems, ``PATIENT_SYSTEMS``);
3. the adapter's local namespace (``local_system``):
   ``urn:passerelle:adapter:<adapter id>:id:<CX-5 type, or "local">[:<CX-4 authority>]``,
   lower-case slugs, so the same person sent by the same adapter always addresses the same
   Patient.

Codes follow the same rule (``local_code_system``): a Coding whose coding system has no known
URI is written in ``urn:passerelle:adapter:<adapter id>:code:<coding system or field>``.

The patient's identity is the first of the Patient's identifiers that has both a system and a
value (``conditional_identifier``), as the string ``system|value`` (``key``, or
``identifier_key`` of an ``identifier`` element). The same functions give the journal partition
at intake (``hl7v2_patient_key`` through ``broker.intake.hl7v2.partition_key``; for FHIR input
the FHIR mapping's key through ``broker.intake.fhir.partition_key``), the dead-letter hold
(``Envelope.partition_key`` from ``bundle_patient_key``) and the conditional URL of the
delivered Patient (``conditional_url``, written by ``broker.delivery.render``), so the three
always agree (``tests/test_identity.py``). A message without an identified patient is ordered
on its own (``unidentified_key``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, model_validator

if TYPE_CHECKING:
    from broker.parsing.hl7v2 import Message

__all__ = [
    "PASSERELLE_ID_SYSTEM",
    "PATIENT_SYSTEMS",
    "CxSystem",
    "IdentifierSystem",
    "bundle_patient_key",
    "conditional_identifier",
    "conditional_url",
    "cx_system",
    "fhir_system",
    "hl7v2_patient_key",
    "identifier_key",
    "key",
    "local_code_system",
    "local_system",
    "resource_system",
    "slug",
    "unidentified_key",
]

PASSERELLE_ID_SYSTEM = "urn:passerelle:id"
"""``Identifier.system`` of the identifier Passerelle gives a resource that has no business
identifier; the value is the resource's deterministic id (source, control id, role)."""

_URI = re.compile(r"^(?:https?://[^\s|]+|urn:[A-Za-z0-9][A-Za-z0-9-]*:[^\s|]+)$")
_SLUG = re.compile(r"[^a-z0-9-]+")


@lru_cache(maxsize=1024)
def slug(text: str) -> str:
    """Lower-case ``text`` and replace each run of other characters than a-z, 0-9, - by ``-``."""
    # Cached: every identifier and order of a message slugs the same few assigning
    # authorities, senders and coding-system names (never a patient's value), ~14 per
    # ADT^A01 and ~60 per ORU^R01; a hit costs a fifth of the regular expression.
    return _SLUG.sub("-", text.lower()).strip("-")


class IdentifierSystem(BaseModel):
    """One ``identifier_systems:`` entry of an inbound adapter: what it matches, and the URI.

    Usage (``adapters/chu-rabat-adt.yaml``)::

        identifier_systems:
          - {authority: EPI, system: "https://chu-rabat.ma/fhir/sid/epi"}
          - {type: MR, system: "https://chu-rabat.ma/fhir/sid/mrn"}
          - {local: "http://his.local/mrn", system: "https://chu-rabat.ma/fhir/sid/mrn"}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    authority: str | None = None
    """CX-4.1 (XCN-9.1) assigning authority, as sent."""
    type: str | None = None
    """CX-5 (XCN-13) identifier type code, as sent (HL7 table 0203 or a local code)."""
    local: str | None = None
    """For FHIR input: the sender's ``Identifier.system``, replaced by ``system``."""
    system: str
    """The URI written as ``Identifier.system`` (``https://…`` or ``urn:…``)."""

    @model_validator(mode="after")
    def _well_formed(self) -> IdentifierSystem:
        if not _URI.match(self.system):
            msg = f"system must be an absolute URI (https://... or urn:...), got {self.system!r}"
            raise ValueError(msg)
        if self.local is not None and (self.authority is not None or self.type is not None):
            raise ValueError("'local' (a FHIR system) cannot be combined with authority or type")
        if self.local is None and self.authority is None and self.type is None:
            raise ValueError(
                "give what the entry matches: authority, type (HL7 v2) or local (FHIR)"
            )
        return self


class CxSystem(BaseModel):
    """One mapping rule for CX/XCN identifier systems: matches authority and/or type.

    ``system`` may hold ``{authority}`` (CX-4.1), ``{facility}`` (CX-6.1, else CX-4.1) and
    ``{sender}`` (MSH-4.1), replaced by lower-case slugs; a rule whose placeholder is empty does
    not match.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    authority: str | None = None
    type: str | None = None
    system: str


PATIENT_SYSTEMS: tuple[CxSystem, ...] = (
    CxSystem(authority="MA", type="NNMAR", system="https://passerelle.ma/fhir/sid/cin"),
    CxSystem(type="NNMAR", system="https://passerelle.ma/fhir/sid/cin"),
    CxSystem(type="PI", system="https://passerelle.ma/fhir/sid/ipp/{authority}"),
    CxSystem(type="PI", system="https://passerelle.ma/fhir/sid/ipp/{sender}"),
    CxSystem(type="MR", system="https://passerelle.ma/fhir/sid/ipp/{authority}"),
    CxSystem(type="SN", system="https://passerelle.ma/fhir/sid/insurance/{authority}"),
)
"""The national patient identifier systems (docs/mappings.md): the CIN (CX-5 NNMAR), the
hospital's IPP (PI/MR per assigning authority, else per sending facility) and insurance member
numbers (SN per insurer). The default of ``cx_identifier`` for PID-3 and MRG-1."""


def local_system(adapter: str, type_code: str = "", authority: str = "") -> str:
    """The adapter's namespace for an identifier no rule gives a system.

    ``urn:passerelle:adapter:<adapter>:id:<type>`` with the CX-5 type code (``local`` when
    empty), followed by ``:<authority>`` when CX-4 is given, all as lower-case slugs: stable,
    readable, and distinct per sender, so one sender's local numbers never meet another's.
    """
    system = f"urn:passerelle:adapter:{adapter}:id:{slug(type_code) or 'local'}"
    authority_slug = slug(authority)
    return f"{system}:{authority_slug}" if authority_slug else system


def local_code_system(adapter: str, name: str) -> str:
    """The adapter's namespace for a code whose coding system has no known URI.

    ``urn:passerelle:adapter:<adapter>:code:<name>``: ``name`` is the sender's coding-system
    name (CWE-3, e.g. a ``99xxx`` site system of HL7 table 0396) or, when the sender names
    none or only ``L`` (local general code), the field the code came from (``obx-3``,
    ``aip-4``), as a lower-case slug. Every Coding Passerelle writes has a system; a site maps
    these local codes by this URI (a ``lab-local-to-loinc``-style table, or a terminology
    server's ConceptMap), and one sender's local codes never meet another's.
    """
    return f"urn:passerelle:adapter:{adapter}:code:{slug(name) or 'local'}"


def resource_system(adapter: str, resource_type: str) -> str:
    """The system of a sender's own resource id, kept as an identifier of resources from FHIR input.

    ``urn:passerelle:adapter:<adapter>:resource:<Type>`` (the adapter's namespace, as
    ``local_system``, with the FHIR resource type as written): ``Patient/pat-1001`` on the
    sending system becomes ``resource_system(adapter, "Patient")|pat-1001``, so a reference to
    it that the message does not resolve can still name the same resource on any server, by
    identifier (docs/mappings.md, "References to the sender's resources").
    """
    return f"urn:passerelle:adapter:{adapter}:resource:{resource_type}"


def _adapter_system(
    adapter_rules: Sequence[IdentifierSystem], authority: str, type_code: str
) -> str | None:
    for rule in adapter_rules:
        if rule.local is not None:
            continue
        if rule.authority is not None and rule.authority != authority:
            continue
        if rule.type is not None and rule.type != type_code:
            continue
        return rule.system
    return None


def _mapping_system(
    rules: Sequence[CxSystem], authority: str, type_code: str, facility: str, sender: str
) -> str | None:
    for rule in rules:
        if rule.authority is not None and rule.authority != authority:
            continue
        if rule.type is not None and rule.type != type_code:
            continue
        system = rule.system
        if "{" not in system:
            return system
        # Slugs only for the placeholders the system holds: most rules hold one or none, and
        # this runs for every identifier of every message.
        for placeholder, text in (
            ("{authority}", authority),
            ("{facility}", facility or authority),
            ("{sender}", sender),
        ):
            if placeholder in system:
                value = slug(text)
                if not value:
                    break
                system = system.replace(placeholder, value)
        else:
            return system
    return None


def cx_system(
    *,
    adapter: str,
    adapter_rules: Sequence[IdentifierSystem],
    rules: Sequence[CxSystem],
    authority: str,
    type_code: str,
    facility: str = "",
    sender: str = "",
) -> tuple[str, bool]:
    """The system of a CX (or XCN) identifier: adapter rules, mapping rules, local namespace.

    Returns:
        The system, and whether it is the adapter's local namespace (no rule matched).
    """
    system = _adapter_system(adapter_rules, authority, type_code) or _mapping_system(
        rules, authority, type_code, facility, sender
    )
    if system is not None:
        return system, False
    return local_system(adapter, type_code, authority), True


def fhir_system(
    adapter: str, adapter_rules: Sequence[IdentifierSystem], ident: dict[str, Any]
) -> str | None:
    """The system a FHIR input Identifier gets, or None when it keeps its own.

    The adapter's ``local`` rules rename a sender's system; an identifier without a system
    gets the adapter's local namespace for its ``type`` (first coding's code).
    """
    system = ident.get("system")
    if isinstance(system, str) and system:
        for rule in adapter_rules:
            if rule.local == system:
                return rule.system
        return None
    type_code = ""
    codings = (
        (ident.get("type") or {}).get("coding") if isinstance(ident.get("type"), dict) else None
    )
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            type_code = coding["code"]
            break
    return local_system(adapter, type_code)


def key(system: str, value: str) -> str:
    """The identity key ``system|value``: FHIR's token search syntax (R4 §3.1.1.5.7)."""
    return f"{system}|{value}"


def unidentified_key(adapter: str, detail: str = "unidentified") -> str:
    """The key of a message without an identified patient: ordered per adapter."""
    return key(f"urn:passerelle:adapter:{adapter}", detail)


def conditional_identifier(resource: dict[str, Any]) -> tuple[str, str] | None:
    """The identifier a resource is found by: its first with both a system and a value."""
    identifiers = resource.get("identifier")
    if isinstance(identifiers, dict):  # 0..1 identifier (Bundle); none of the mapped types
        identifiers = [identifiers]
    for ident in identifiers if isinstance(identifiers, list) else []:
        if not isinstance(ident, dict):
            continue
        system, value = ident.get("system"), ident.get("value")
        if isinstance(system, str) and system and isinstance(value, str) and value:
            return system, value
    return None


def identifier_key(identifiers: Any) -> str | None:
    """The key of an ``identifier`` element (a list, or one Identifier): its first with a system.

    ``None`` when no identifier has both a system and a value.
    """
    found = conditional_identifier({"identifier": identifiers})
    return key(*found) if found is not None else None


_PLAIN_SYSTEM = re.compile(r"[A-Za-z0-9_.~:/-]*").fullmatch
"""A system ``quote(system, safe=":/")`` returns unchanged (RFC 3986 unreserved, ``:`` and ``/``)."""
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch
"""A value ``quote(value, safe="")`` returns unchanged."""


def conditional_url(resource_type: str, system: str, value: str) -> str:
    """``Type?identifier=system|value``: the key as a conditional URL (FHIR R4 §3.1.1.5.7 token).

    The system and value are escaped as a query; the ``|`` between them is the token syntax.
    A text of characters ``quote`` leaves as they are is not passed to it (0.96 → 0.43 µs a
    call; a FHIR delivery makes a few per entry).
    """
    if not _PLAIN_SYSTEM(system):
        system = quote(system, safe=":/")
    if not _PLAIN_VALUE(value):
        value = quote(value, safe="")
    return f"{resource_type}?identifier={system}|{value}"


def bundle_patient_key(bundle: dict[str, Any], adapter: str) -> str:
    """The patient key of a canonical Bundle: its first Patient's ``conditional_identifier``."""
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Patient":
            found = identifier_key(resource.get("identifier"))
            if found is not None:
                return found
    return unidentified_key(adapter)


def hl7v2_patient_key(
    message: Message,
    adapter: str,
    adapter_rules: Sequence[IdentifierSystem] = (),
    rules: Sequence[CxSystem] = PATIENT_SYSTEMS,
) -> str | None:
    """The patient key of an HL7 v2 message before it is mapped: PID-3's first identifier.

    The first PID-3 repetition with a CX-1 value, its system resolved exactly as the mapping's
    ``cx_identifier`` resolves it (``cx_system``), so the key equals the mapped Patient's.
    None when the message has no PID or no identifier in PID-3.
    """
    pid = message.first("PID")
    if pid is None:
        return None
    for rep in range(1, len(pid.repetitions(3)) + 1):
        value = pid.value(3, 1, rep=rep).strip()
        if not value:
            continue
        system, _ = cx_system(
            adapter=adapter,
            adapter_rules=adapter_rules,
            rules=rules,
            authority=pid.value(3, 4, rep=rep).strip(),
            type_code=pid.value(3, 5, rep=rep).strip(),
            facility=pid.value(3, 6, rep=rep).strip(),
            sender=message.sending_facility.strip(),
        )
        return key(system, value)
    return None
