"""FHIR R4 input (one resource or a Bundle) to the canonical FHIR R4 message Bundle.

The supported resources are kept whole: each gets a deterministic id (uuid5 of the adapter, the
input's identity and the resource's own type/id, as HL7 input) and keeps the sender's id as an
identifier (``identity.resource_system``), every reference to an entry of the input is
rewritten to that entry's new ``urn:uuid:`` and every other reference to the sender's server
to a logical reference (``references``), identifiers and codes are normalised, and the type's
``require:`` checks must hold. What the canonical message does not keep (a
Bundle's ``entry.request``, ``entry.response``, ``entry.search``, ``timestamp``, ``meta``…, the
parts of an input MessageHeader other than its event, source and focus, and resources of types
the file does not list) is reported as unmapped by FHIRPath-like location, never dropped
silently. An input with no supported resource is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.canonical import validate_bundle
from broker.envelope import MappingRef
from broker.errors import CanonicalError, FHIRParseError, MappingError, NoMappingError
from broker.identity import (
    IdentifierSystem,
    identifier_key,
    resource_system,
    unidentified_key,
)
from broker.mapping.bundle import V2_0003, message_bundle, resource_id
from broker.mapping.context import MapContext, MapResult, TraceStep
from broker.mapping.fhir_in.fhirpath import Expression
from broker.mapping.fhir_in.normalise import Normaliser
from broker.mapping.fhir_in.references import Entry, Run, aliases, base_of, rewrite
from broker.mapping.spec import SharedTable

__all__ = ["BUNDLE_TYPES", "FHIR_VERSION", "CompiledType", "FhirMapping", "Require", "Site"]

FHIR_VERSION = "4.0.1"
"""The FHIR version of the input and of the canonical message (R4): the envelope's ``version``."""

BUNDLE_TYPES = ("transaction", "batch", "message", "collection")
"""The Bundle types accepted as input (FHIR R4 Bundle.type, value set bundle-type)."""

_BUNDLE_KEPT = frozenset({"resourceType", "id", "identifier", "type", "entry"})
"""Bundle elements the canonical message keeps: the id and identifier become its correlation."""
_HEADER_KEPT = frozenset({"resourceType", "id", "eventCoding", "eventUri", "reason", "focus"})
_SOURCE_KEPT = frozenset({"name", "software", "version", "contact"})


@dataclass(frozen=True)
class Require:
    """A check a resource must pass, and the reason given when it does not."""

    check: Expression
    reason: str


@dataclass(frozen=True)
class CompiledType:
    """A supported resource type: its patient rule and required content."""

    name: str
    patient: Expression | None
    requires: tuple[Require, ...]
    line: int | None = None


@dataclass(frozen=True)
class Site:
    """A site file: the normalisation its adapters' input gets."""

    id: str
    file: str
    sha256: str
    adapters: frozenset[str]
    normaliser: Normaliser


@dataclass
class FhirMapping:
    """The compiled ``mappings/fhir/`` files: call ``map(data, ctx)``."""

    id: str
    file: str
    sha256: str
    event_system: str
    types: dict[str, CompiledType]
    normaliser: Normaliser
    sites: dict[str, Site]
    tables: dict[str, SharedTable]
    hl7_events: dict[str, str] = field(default_factory=dict)
    """HL7 table 0003 trigger → the ``MSG^TRG`` event the HL7 v2 mappings name (``A01`` →
    ``ADT^A01``), given by ``MappingSet.load``: a message Bundle whose MessageHeader.eventCoding
    is in table 0003 gets that event, so one subscription serves HL7 v2 and FHIR input."""

    def files(self) -> list[FhirMapping | Site]:
        """This base file and its site files, each with id, file and sha256."""
        sites = {id(s): s for s in self.sites.values()}
        return [self, *sorted(sites.values(), key=lambda s: s.id)]

    def map(self, data: Any, ctx: MapContext, trace: list[TraceStep] | None = None) -> MapResult:
        """Map one FHIR resource or Bundle (parsed JSON) to a validated canonical message Bundle.

        ``trace``, for dry runs only (it receives the patient's values), gets a TraceStep per
        resource copied and per element rewritten or normalised.

        Raises:
            FHIRParseError: not a FHIR resource.
            NoMappingError: an unsupported Bundle type, or no supported resource in the input.
            CanonicalError: a resource fails a ``require:`` check, or the result is not valid.
            MappingError: a FHIRPath expression failed on the input.
        """
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise FHIRParseError("the JSON is not a FHIR resource: it has no resourceType")
        run = Run(self.file, trace, ctx.source)
        site = self.sites.get(ctx.source)
        normaliser = site.normaliser if site is not None else self.normaliser
        header_in, kept, correlation = self._entries(data, ctx.source, run)
        used: set[str] = set()
        resources = []
        for index, entry in enumerate(kept, 1):
            resource = entry.resource
            resource["id"] = entry.new_id
            out = f"Bundle.entry[{index}].resource"
            line = self.types[resource["resourceType"]].line
            if trace is not None:
                trace.append(TraceStep(self.file, line, entry.where, out, resource["resourceType"]))
            rewrite(resource, entry.where, run, out, line)
            used |= normaliser.apply(
                resource, out, trace, adapter=ctx.source, adapter_rules=ctx.identifier_systems
            )
            # The require: checks read what the sender gave: a Patient known only by its id on
            # the sender's server is not identified on the network (refused, as PID-3 empty is).
            self._require(resource, entry.where)
            _keep_sender_id(entry, ctx.source)
            if trace is not None and entry.sender_id is not None:
                step = TraceStep(self.file, line, f"{entry.where}.id", f"{out}.identifier", None)
                trace.append(step)
            resources.append(resource)
        event, header = self._header(
            header_in,
            data["resourceType"],
            kept,
            run,
            ctx.source,
            correlation,
        )
        entries = [(r["id"], r) for r in resources]
        bundle = message_bundle(ctx.source, correlation, ctx.received_at, header, entries)
        validate_bundle(bundle)
        refs = [MappingRef(id=self.id, sha256=self.sha256)]
        if site is not None:
            refs.insert(0, MappingRef(id=site.id, sha256=site.sha256))
        refs += [
            MappingRef(id=f"table:{n}", sha256=self.tables[n].sha256)
            for n in sorted(used)
            if n in self.tables
        ]
        return MapResult(
            bundle=bundle,
            findings=tuple(run.findings),
            mappings=tuple(refs),
            partition_key=self._partition_key(kept, run, ctx.source),
            event=event,
            version=FHIR_VERSION,
            correlation_id=correlation,
            unmapped=tuple(run.unmapped),
        )

    def patient_key(
        self, data: Any, source: str, adapter_rules: Sequence[IdentifierSystem] = ()
    ) -> str:
        """The partition key ``map`` would give this input, without mapping it.

        The same identity as ``map(...).partition_key``: the first Patient's first
        identifier with its system normalised, else the first resource's patient reference.
        The HTTP edge journals by it, so one patient's messages share a partition however the
        sender spells the identifier system (see docs/reliability.md, per-patient order).

        Raises:
            MessageError: as ``map`` for input it would refuse before the ``require:`` checks.
        """
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise FHIRParseError("the JSON is not a FHIR resource: it has no resourceType")
        run = Run(self.file, None, source)
        site = self.sites.get(source)
        normaliser = site.normaliser if site is not None else self.normaliser
        _, kept, _ = self._entries(data, source, run)
        for entry in kept:
            rewrite(entry.resource, entry.where, run)
            normaliser.apply(
                entry.resource, entry.where, None, adapter=source, adapter_rules=adapter_rules
            )
            _keep_sender_id(entry, source)
        return self._partition_key(kept, run, source)

    def _entries(
        self, data: dict[str, Any], source: str, run: Run
    ) -> tuple[dict[str, Any] | None, list[Entry], str]:
        """The input MessageHeader, the supported entries (with new ids) and the correlation."""
        header_in: dict[str, Any] | None = None
        if data["resourceType"] == "Bundle":
            entries, header_in = self._bundle_entries(data, run)
        else:
            entries = [Entry(data["resourceType"], copy.deepcopy(data), None)]
        correlation = _correlation(data)
        kept = [e for e in entries if self._supported(e, run)]
        if not kept:
            found = sorted({str(e.resource.get("resourceType")) for e in entries}) or ["none"]
            msg = (
                f"no supported resource in the FHIR input (found {', '.join(found)}; "
                f"supported: {', '.join(sorted(self.types))})"
            )
            raise NoMappingError(msg, location="resourceType")
        roles: set[str] = set()
        for entry in kept:
            kind = entry.resource["resourceType"]
            old = entry.resource.get("id")
            role = f"{kind}/{old}" if isinstance(old, str) and old else entry.where
            if isinstance(old, str) and old:
                entry.sender_id = old
                base = base_of(entry.full_url or "", kind, old)
                if base is not None:
                    run.bases.add(base)
            if role in roles:  # the same Type/id twice (a batch may): still one id per entry
                role = f"{role}|{entry.where}"
            roles.add(role)
            entry.new_id = resource_id(source, correlation, role)
            target = f"urn:uuid:{entry.new_id}"
            for alias in aliases(entry):
                run.targets.setdefault(alias, target)
        return header_in, kept, correlation

    def _bundle_entries(
        self, data: dict[str, Any], run: Run
    ) -> tuple[list[Entry], dict[str, Any] | None]:
        kind = data.get("type")
        if kind not in BUNDLE_TYPES:
            msg = (
                f"a Bundle of type {kind or '(none)'} is not accepted as input; "
                f"expected {', '.join(BUNDLE_TYPES)}"
            )
            raise NoMappingError(msg, location="Bundle.type")
        for key in data:
            if key not in _BUNDLE_KEPT:
                run.lose(f"Bundle.{key}")
        raw = data.get("entry")
        items = raw if isinstance(raw, list) else []
        entries: list[Entry] = []
        header: dict[str, Any] | None = None
        for index, item in enumerate(items):
            where = f"Bundle.entry[{index}]"
            if not isinstance(item, dict):
                continue
            for key in item:
                if key not in ("fullUrl", "resource"):
                    run.lose(f"{where}.{key}")
            resource = item.get("resource")
            if not isinstance(resource, dict):
                run.find("no-resource", where, f"{where} has no resource; nothing of it is kept")
                continue
            full_url = item.get("fullUrl") if isinstance(item.get("fullUrl"), str) else None
            entry = Entry(f"{where}.resource", copy.deepcopy(resource), full_url)
            if kind == "message" and index == 0:
                if resource.get("resourceType") != "MessageHeader":
                    msg = "a message Bundle must start with its MessageHeader (FHIR R4 Bundle invariant bdl-12)"
                    raise CanonicalError(msg, location="Bundle.entry[0].resource")
                header = entry.resource
                source = resource.get("source")
                endpoint = source.get("endpoint") if isinstance(source, dict) else None
                if isinstance(endpoint, str) and endpoint.startswith(("http://", "https://")):
                    run.bases.add(endpoint.rstrip("/"))
                for alias in aliases(entry):
                    run.dropped.add(alias)
                continue
            entries.append(entry)
        if kind == "message" and header is None:
            msg = "a message Bundle must start with its MessageHeader; it has no entry"
            raise CanonicalError(msg, location="Bundle.entry")
        return entries, header

    def _supported(self, entry: Entry, run: Run) -> bool:
        kind = str(entry.resource.get("resourceType"))
        if kind in self.types:
            return True
        for alias in aliases(entry):
            run.dropped.add(alias)
        if entry.where != kind:
            run.lose(entry.where)
            msg = f"{kind} is not a supported resource type; the entry is not kept"
            run.find("unsupported-resource", entry.where, msg)
        return False

    def _require(self, resource: dict[str, Any], where: str) -> None:
        compiled = self.types[resource["resourceType"]]
        for require in compiled.requires:
            try:
                result = require.check(resource)
            except ValueError as exc:
                raise MappingError(str(exc), mapping=self.file, source_path=where) from None
            if not result or result == [False]:
                msg = f"{where}: {require.reason}; the check {require.check.text} is false"
                raise CanonicalError(msg, location=where)

    def _header(
        self,
        given: dict[str, Any] | None,
        kind: str,
        kept: list[Entry],
        run: Run,
        source: str,
        correlation: str,
    ) -> tuple[str, dict[str, Any]]:
        """The canonical MessageHeader and the envelope event.

        A message Bundle keeps its MessageHeader's event (eventCoding or eventUri), source
        (but the endpoint names the inbound adapter, as for HL7 input), reason and focus; other
        input gets the event ``<resource type>`` or ``Bundle`` in ``event-system``.
        """
        header: dict[str, Any] = {
            "resourceType": "MessageHeader",
            "id": resource_id(source, correlation, "message-header"),
        }
        endpoint = f"urn:passerelle:adapter:{source}"
        if given is None:
            header["eventCoding"] = {"system": self.event_system, "code": kind}
            header["source"] = {"endpoint": endpoint}
            header["focus"] = [{"reference": f"urn:uuid:{e.new_id}"} for e in kept]
            return kind, header
        where = "Bundle.entry[0].resource"
        for key, value in given.items():
            if key in _HEADER_KEPT - {"id", "resourceType", "focus"}:
                header[key] = value
            elif key == "source" and isinstance(value, dict):
                header["source"] = {k: v for k, v in value.items() if k in _SOURCE_KEPT}
                for k in value:
                    if k not in _SOURCE_KEPT:
                        run.lose(f"{where}.source.{k}")
            elif key not in _HEADER_KEPT:
                run.lose(f"{where}.{key}")
        header.setdefault("source", {})["endpoint"] = endpoint
        given_focus = given.get("focus")
        focus: list[Any] = copy.deepcopy(given_focus) if isinstance(given_focus, list) else []
        rewrite(focus, f"{where}.focus", run, "Bundle.entry[0].resource.focus", 1)
        focus = [f for f in focus if isinstance(f, dict) and f]
        header["focus"] = focus or [{"reference": f"urn:uuid:{e.new_id}"} for e in kept]
        coding = given.get("eventCoding")
        event = coding.get("code") if isinstance(coding, dict) else given.get("eventUri")
        if not isinstance(event, str) or not event:
            msg = "the MessageHeader has no event (eventCoding.code or eventUri)"
            raise CanonicalError(msg, location=f"{where}.eventCoding")
        # The v2-to-FHIR IG maps MSH-9.2 to eventCoding in table 0003 and leaves MSH-9.1 out
        # (ConceptMap datatype-msg-to-messageheader); the message code comes from the mappings.
        if isinstance(coding, dict) and coding.get("system") == V2_0003:
            event = self.hl7_events.get(event, event)
        return event, header

    def _partition_key(self, kept: list[Entry], run: Run, source: str) -> str:
        """The first Patient's first identifier; else the patient reference of the first resource.

        As for HL7 input (``system|value``); a reference to a patient only the sender knows
        (``Patient/123``) is qualified by the adapter.
        """
        patients = {
            f"urn:uuid:{e.new_id}": e.resource
            for e in kept
            if e.resource["resourceType"] == "Patient"
        }
        for patient in patients.values():
            key = identifier_key(patient.get("identifier"))
            if key is not None:
                return key
        for entry in kept:
            rule = self.types[entry.resource["resourceType"]].patient
            if rule is None:
                continue
            try:
                references = rule(entry.resource)
            except ValueError as exc:
                raise MappingError(str(exc), mapping=self.file, source_path=entry.where) from None
            for reference in references:
                if not isinstance(reference, dict):
                    continue
                key = identifier_key(reference.get("identifier"))
                if key is not None:
                    return key
                literal = reference.get("reference")
                if isinstance(literal, str) and literal:
                    if literal.startswith("urn:uuid:"):
                        if literal in patients:
                            continue
                    else:
                        return unidentified_key(source, literal)
        return unidentified_key(source)


def _keep_sender_id(entry: Entry, source: str) -> None:
    """Add the sender's resource id as an identifier, after the resource's own identifiers.

    ``use: secondary`` (FHIR R4 IdentifierUse): it names the resource only relative to the
    sending adapter. Appended last, so a business identifier stays the one the resource is found
    by (``identity.conditional_identifier``); a resource without one is found by this one, the
    same for every version the sender posts.
    """
    if entry.sender_id is None:
        return
    resource = entry.resource
    system = resource_system(source, resource["resourceType"])
    given = resource.get("identifier")
    idents = given if isinstance(given, list) else []
    if given is not None and not isinstance(given, list):
        return  # not a list: FHIR validation names the element
    if any(
        isinstance(i, dict) and i.get("system") == system and i.get("value") == entry.sender_id
        for i in idents
    ):
        return
    own = {"use": "secondary", "system": system, "value": entry.sender_id}
    resource["identifier"] = [*idents, own]


def _correlation(data: dict[str, Any]) -> str:
    """The input's identity: its Bundle.identifier, else type/id[/_history/version], else a digest.

    The same input always gives the same resource ids, so a replay updates, never duplicates.
    """
    if data["resourceType"] == "Bundle":
        key = identifier_key(data.get("identifier"))
        if key is not None:
            return key
    rid = data.get("id")
    if isinstance(rid, str) and rid:
        meta = data.get("meta")
        version = meta.get("versionId") if isinstance(meta, dict) else None
        suffix = f"/_history/{version}" if isinstance(version, str) and version else ""
        return f"{data['resourceType']}/{rid}{suffix}"
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
