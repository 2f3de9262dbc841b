"""Codes: HL7 coding-system names (table 0396) to FHIR systems, code, CodeableConcept and
Annotation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from broker.envelope import Finding
from broker.identity import local_code_system
from broker.mapping.transforms.base import Env, SourceValue, Transform, first_value
from broker.mapping.transforms.strings import fn_string

__all__ = [
    "CODING_SYSTEMS",
    "TRANSFORMS",
    "UCUM",
    "coding_system",
    "fn_annotation",
    "fn_code",
    "fn_codeable_concept",
    "is_code",
]


UCUM = "http://unitsofmeasure.org"


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


_CODE = re.compile(r"^[^\s]+( [^\s]+)*$")


def is_code(text: str) -> bool:
    """Tell whether ``text`` is a valid FHIR ``code`` (no leading, trailing or double spaces)."""
    return bool(_CODE.match(text))


def fn_code(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """ID/IS or the first component of CWE → FHIR code (no inner whitespace runs)."""
    v = first_value(values)
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
    v = first_value(values)
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


TRANSFORMS: dict[str, Transform] = {
    "code": Transform(fn_code, "code"),
    "annotation": Transform(fn_annotation, "Annotation"),
    "codeable_concept": Transform(fn_codeable_concept, "CodeableConcept", args=_CodeArgs),
}
"""The codes transforms by the name a rule's ``function:`` uses."""
