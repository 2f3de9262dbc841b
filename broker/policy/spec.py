"""The ``policy:`` block of a subscriber's registration: what it may receive, and in what form.

Usage (``adapters/research.yaml``)::

    policy:
      id: research-pseudo
      purpose: HRESCH
      sources: [chu-rabat-adt]
      events: ["ADT^A01", "ADT^A04"]
      resource_types: [MessageHeader, Patient, Encounter]
      confidentiality: N
      remove: ["Patient.telecom", "Patient.address.line"]
      mask:
        - {path: Patient.name.given, with: "***"}
      pseudonymise:
        key_file: /etc/passerelle/keys/research.key
        identifiers:
          - {system: "https://passerelle.ma/fhir/sid/cin", as: "urn:passerelle:pseudonym:research:cin"}
      minimum: ["Patient.identifier", "Patient.gender"]

Everything is checked and compiled when the registration loads (a bad path or a missing key
is a file:line error and the process refuses to start); the pseudonymisation key is read then
from its file or environment variable, never from the YAML.

What ``disclose`` reads for every message is a ``cached_property``, filled at load: pydantic
answers a private attribute through ``__getattr__`` (1.7 µs a read, measured with pydantic
2.14) and a cached property from the instance's ``__dict__`` (0.05 µs).
"""

from __future__ import annotations

import fnmatch
import os
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from broker.policy.paths import ElementPath, parse_path
from broker.yamlspec import beside_registration

__all__ = [
    "CONFIDENTIALITY",
    "CONFIDENTIALITY_SYSTEM",
    "NETWORK_KEY_ENV",
    "PURPOSES",
    "Mask",
    "PolicySpec",
    "PseudonymSystem",
    "Pseudonymise",
]

CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
CONFIDENTIALITY = ("U", "L", "M", "N", "R", "V")
"""v3 Confidentiality codes, least to most restricted (unrestricted, low, moderate, normal,
restricted, very restricted)."""
PURPOSES = frozenset(
    {
        "TREAT", "ETREAT", "HPAYMT", "HOPERAT", "HRESCH", "PUBHLTH", "HSYSADMIN", "HQUALIMP",
        "HMARKT", "PATRQT", "FAMRQT", "HLEGAL", "HDIRECT", "CAREMGT", "COVERAGE", "POPHLTH",
    }
)  # fmt: skip
"""PurposeOfUse codes (v3 ActReason, HL7 terminology) a policy may state."""
NETWORK_KEY_ENV = "PASSERELLE_PSEUDONYM_KEY"
"""The network's pseudonymisation key, when a policy names no key of its own."""
_MIN_KEY_BYTES = 16


class Mask(BaseModel):
    """One masked element: its path and the value that replaces a primitive value."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    path: str
    with_: str = Field(alias="with", min_length=1)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        parse_path(value)
        return value

    def model_post_init(self, context: Any, /) -> None:
        _ = self.compiled

    @cached_property
    def compiled(self) -> ElementPath:
        """The compiled path."""
        return parse_path(self.path)


class PseudonymSystem(BaseModel):
    """An identifier system replaced by a keyed pseudonym, and the system it becomes."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    system: str = Field(min_length=1)
    as_: str = Field(alias="as", pattern=r"^(urn:|https?://)\S+$")


class Pseudonymise(BaseModel):
    """Keyed pseudonymisation: HMAC-SHA256 of ``system|value`` under the policy's key.

    The key comes from ``key_file`` (a relative path is read from the registration file's
    directory; keep it outside the repository) or the environment variable ``key_env`` (default
    ``PASSERELLE_PSEUDONYM_KEY``, the network's key): at least 16 bytes, read at load.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    identifiers: list[PseudonymSystem] = Field(min_length=1)
    key_file: Path | None = None
    key_env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    _key: bytes = PrivateAttr(default=b"")

    @field_validator("key_file")
    @classmethod
    def _beside_the_registration(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else beside_registration(value, info.context)

    @model_validator(mode="after")
    def _read_key(self) -> Pseudonymise:
        if self.key_file is not None and self.key_env is not None:
            raise ValueError("name the key by key_file or key_env, not both")
        if self.key_file is not None:
            try:
                key = self.key_file.read_bytes().strip()
            except OSError as exc:
                msg = f"cannot read the pseudonymisation key file {self.key_file} ({exc.strerror})"
                raise ValueError(msg) from None
            where = f"the key file {self.key_file}"
        else:
            name = self.key_env or NETWORK_KEY_ENV
            key = os.environ.get(name, "").strip().encode()
            where = f"the environment variable {name}"
        if len(key) < _MIN_KEY_BYTES:
            msg = (
                f"{where} holds no pseudonymisation key of at least {_MIN_KEY_BYTES} bytes; "
                "set it (e.g. `openssl rand -hex 32`) outside the registration"
            )
            raise ValueError(msg)
        self._key = key
        _ = self.systems, self.key
        return self

    @cached_property
    def key(self) -> bytes:
        """The HMAC key (never logged, never serialised)."""
        return self._key

    @cached_property
    def systems(self) -> dict[str, str]:
        """Identifier system → pseudonym system (do not change it)."""
        return {p.system: p.as_ for p in self.identifiers}


class PolicySpec(BaseModel):
    """A subscriber's data-sharing policy (``docs/security.md``, "Data-sharing policies")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    """Named in every delivery record; default: the subscriber's id."""
    purpose: str
    """The purpose of use of what is shared (v3 PurposeOfUse: TREAT, HPAYMT, PUBHLTH…)."""
    sources: list[str] | None = None
    """Inbound adapters it may receive from; ``None``: every source its subscription takes."""
    events: list[str] | None = None
    """Event patterns it may receive (``ADT^*``); ``None``: every event it subscribes to."""
    resource_types: list[str] | None = None
    """Resource types it may receive; the others are removed (MessageHeader always stays)."""
    confidentiality: str = "N"
    """The highest v3 Confidentiality level it may receive: data labelled above (``R``, ``V``
    in ``meta.security``) is not sent."""
    remove: list[str] = Field(default_factory=list)
    mask: list[Mask] = Field(default_factory=list)
    pseudonymise: Pseudonymise | None = None
    minimum: list[str] = Field(default_factory=lambda: ["Patient.identifier"])
    """What a patient's ``restrict`` consent leaves: ``Type.element`` names (the resource
    types named keep only these elements; the others are removed)."""

    @field_validator("purpose")
    @classmethod
    def _purpose(cls, value: str) -> str:
        if value not in PURPOSES:
            known = ", ".join(sorted(PURPOSES))
            msg = f"unknown purpose of use {value!r}; expected a PurposeOfUse code: {known}"
            raise ValueError(msg)
        return value

    @field_validator("confidentiality")
    @classmethod
    def _level(cls, value: str) -> str:
        if value not in CONFIDENTIALITY:
            msg = f"unknown confidentiality {value!r}; expected one of {', '.join(CONFIDENTIALITY)}"
            raise ValueError(msg)
        return value

    @field_validator("resource_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if not name[:1].isupper() or not name.isalpha():
                msg = f"{name!r} is not a FHIR resource type name (e.g. Patient)"
                raise ValueError(msg)
        return value

    @field_validator("remove")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_path(text)
        return value

    @field_validator("minimum")
    @classmethod
    def _minimum(cls, value: list[str]) -> list[str]:
        for text in value:
            path = parse_path(text)
            if len(path.steps) != 1 or path.where is not None:
                msg = f"{text!r}: minimum names top-level elements only (Type.element)"
                raise ValueError(msg)
        return value

    def model_post_init(self, context: Any, /) -> None:
        _ = self.removed, self.allowed_types, self.minimum_elements

    @cached_property
    def removed(self) -> tuple[ElementPath, ...]:
        """The compiled ``remove`` paths."""
        return tuple(parse_path(text) for text in self.remove)

    @cached_property
    def allowed_types(self) -> frozenset[str] | None:
        """``resource_types`` and MessageHeader, or None when every type is allowed."""
        if self.resource_types is None:
            return None
        return frozenset(self.resource_types) | {"MessageHeader"}

    def label(self, subscriber: str) -> str:
        """``policy-id/PURPOSE``: what a delivery record names."""
        return f"{self.id or subscriber}/{self.purpose}"

    def allows_source(self, source: str) -> bool:
        """Tell whether the policy lets messages from ``source`` through."""
        return self.sources is None or source in self.sources

    def allows_event(self, event: str) -> bool:
        """Tell whether the policy lets ``event`` through."""
        return self.events is None or any(fnmatch.fnmatchcase(event, p) for p in self.events)

    def allows_level(self, level: str) -> bool:
        """Tell whether data labelled ``level`` may be sent."""
        return CONFIDENTIALITY.index(level) <= CONFIDENTIALITY.index(self.confidentiality)

    @cached_property
    def minimum_elements(self) -> dict[str, frozenset[str]]:
        """Resource type → the elements a restricted patient's resources keep."""
        kept: dict[str, set[str]] = {}
        for text in self.minimum:
            kind, _, element = text.partition(".")
            kept.setdefault(kind, set()).add(element)
        return {kind: frozenset(elements) for kind, elements in kept.items()}
