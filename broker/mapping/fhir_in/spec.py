"""The schema of ``mappings/fhir/*.yaml``: what FHIR R4 input is accepted and how it is normalised.

A base file (``mappings/fhir/r4.yaml``) declares the supported resource types, per type the
FHIRPath rules that find the patient and the required content, and the normalisation tables.
A site file (``extends:`` the base id, ``adapters:``) adds normalisation entries for the
messages of its inbound adapters; its entries win over the base's for the same key.

Grammar::

    id: fhir-r4
    event-system: <URI of the event codes of input that is not a message Bundle>
    resources:
      <ResourceType>:
        note: <why; spec citation>
        patient: <FHIRPath giving the Reference(s) to the patient>   # Patient itself: omitted
        require:
          - {check: <FHIRPath that must be true>, reason: <sentence>}
    normalise:
      identifier-systems: {<local system URI or OID>: <national URI>}
      code-systems: {<local system URI or OID>: <canonical URI>}
      codes:
        - {system: <code system URI>, table: <shared table in mappings/tables/>}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CodeTableSpec", "FhirSiteSpec", "FhirSpec", "NormaliseSpec", "RequireSpec", "TypeSpec"]

_STRICT = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RequireSpec(BaseModel):
    """Content a resource must have: a FHIRPath ``check`` that must be true, and why."""

    model_config = _STRICT

    check: str = Field(min_length=1)
    reason: str = Field(min_length=1)


class TypeSpec(BaseModel):
    """One supported resource type."""

    model_config = _STRICT

    note: str | None = None
    patient: str | None = None
    """FHIRPath on the resource giving the Reference(s) to its patient (``subject``)."""
    require: list[RequireSpec] = Field(default_factory=list)


class CodeTableSpec(BaseModel):
    """Codings of ``system`` get the coding a shared table gives for their code, added first."""

    model_config = _STRICT

    system: str = Field(min_length=1)
    table: str = Field(min_length=1)
    note: str | None = None


class NormaliseSpec(BaseModel):
    """Normalisation tables: local identifier systems, code systems and codes to national ones."""

    model_config = _STRICT

    identifier_systems: dict[str, str] = Field(default_factory=dict, alias="identifier-systems")
    code_systems: dict[str, str] = Field(default_factory=dict, alias="code-systems")
    codes: list[CodeTableSpec] = Field(default_factory=list)


class FhirSpec(BaseModel):
    """A base FHIR inbound file (``mappings/fhir/r4.yaml``)."""

    model_config = _STRICT

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str | None = None
    event_system: str = Field(alias="event-system", min_length=1)
    resources: dict[str, TypeSpec] = Field(min_length=1)
    normalise: NormaliseSpec = Field(default_factory=NormaliseSpec)


class FhirSiteSpec(BaseModel):
    """A site's normalisation for FHIR input from its inbound adapters."""

    model_config = _STRICT

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str | None = None
    extends: str = Field(min_length=1)
    adapters: list[str] = Field(min_length=1)
    normalise: NormaliseSpec
