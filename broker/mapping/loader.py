"""MappingSet: every mapping file under ``mappings/``, loaded and compiled once at start-up."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ValidationError

from broker.envelope import MappingRef
from broker.errors import ConfigurationError, MappingError, MappingSpecError, NoMappingError
from broker.mapping.context import MapContext, MapResult, TraceStep
from broker.mapping.fhir_in import FhirMapping, load_fhir
from broker.mapping.files import mapping_files
from broker.mapping.hl7v2_in.engine import CompiledMapping, compile_inbound
from broker.mapping.hl7v2_in.mapper import map_hl7v2
from broker.mapping.hl7v2_in.sites import compile_site, site_order
from broker.mapping.hl7v2_in.unmapped import unmapped_fields
from broker.mapping.hl7v2_out.reverse import CompiledOutbound, compile_outbound
from broker.mapping.layers import MappingRoots, layers
from broker.mapping.spec import InboundSpec, OutboundSpec, SharedTable, SiteSpec
from broker.mapping.tables import load_tables
from broker.parsing.hl7v2 import Message, charset_code
from broker.yamlspec import read_yaml, validation_errors

__all__ = ["MappingSet"]


def _validate(model: type[BaseModel], data: dict[str, Any], file: str, lines: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = validation_errors(exc, file, lines, MappingSpecError)
        first = problems[0]
        first.problems = problems  # type: ignore[attr-defined]
        raise first from None


class MappingSet:
    """The loaded mappings: inbound by (event, version), outbound by trigger event.

    A site mapping (``extends:``) serves its adapters: for a message from one of them it is
    chosen before the general mapping of the same event and version.

    Build it with ``MappingSet.load(Path("mappings"))``; it is immutable afterwards and safe to
    share between threads.

    Validation of mapped Bundles: by default the checks are compiled. At load every rule's output
    type is checked against its FHIR element (fhir.resources R4B models), constants and value-map
    entries are validated, and every transform returns valid FHIR or nothing; per message only
    required elements and choice types are checked. ``full_validation=True`` also runs
    ``broker.canonical.validate_bundle`` (every resource through fhir.resources) per message,
    at about 0.2-0.35 ms per resource.
    """

    def __init__(
        self,
        inbound: list[CompiledMapping],
        outbound: list[CompiledOutbound],
        *,
        full_validation: bool = False,
        fhir: FhirMapping | None = None,
    ) -> None:
        self.full_validation = full_validation
        self.fhir = fhir
        """The FHIR inbound mapping (``mappings/fhir/``); ``None`` when there is none."""
        self._inbound_list = tuple(inbound)
        self._outbound_list = tuple(outbound)
        self._inbound: dict[tuple[str, str], CompiledMapping] = {}
        self._sites: dict[tuple[str, str, str], CompiledMapping] = {}
        for mapping in inbound:
            if mapping.adapters:
                self._add_site(mapping)
                continue
            for event in mapping.events:
                for version in mapping.versions:
                    other = self._inbound.get((event, version))
                    if other is not None:
                        reason = (
                            f"{event} v{version} is already mapped by {other.file}; "
                            "one mapping per event and version"
                        )
                        raise MappingSpecError(mapping.file, None, "source.events", reason)
                    self._inbound[(event, version)] = mapping
        # What each mapping records in its MapResults: itself, the mappings it extends and the
        # shared tables it uses, with content hashes (built once, not per message).
        self._refs: dict[int, tuple[MappingRef, ...]] = {}
        for mapping in inbound:
            lineage = [MappingRef(id=m.id, sha256=m.sha256) for m in mapping.lineage]
            shared = {
                name: table
                for name in sorted(mapping.tables)
                if isinstance(table := mapping.maps.get(name), SharedTable)
            }
            tables = [MappingRef(id=f"table:{n}", sha256=t.sha256) for n, t in shared.items()]
            self._refs[id(mapping)] = (*lineage, *tables)
        self._outbound: dict[str, CompiledOutbound] = {}
        for out in outbound:
            for trigger in out.triggers():
                self._outbound.setdefault(trigger, out)

    def _add_site(self, mapping: CompiledMapping) -> None:
        for adapter in sorted(mapping.adapters):
            for event in mapping.events:
                for version in mapping.versions:
                    other = self._sites.get((adapter, event, version))
                    if other is not None:
                        reason = (
                            f"{event} v{version} from adapter {adapter} is already mapped by "
                            f"{other.file}; one site mapping per adapter, event and version"
                        )
                        raise MappingSpecError(mapping.file, None, "source.adapters", reason)
                    self._sites[(adapter, event, version)] = mapping

    @classmethod
    def load(cls, directory: MappingRoots, *, full_validation: bool = False) -> MappingSet:
        """Load and compile every ``*.yaml`` under ``directory`` except ``directory/tests/``.

        ``directory`` is one mappings root or layers of them, the base first (a site's
        directory over the packaged base set, ``broker.mapping.layers``): a file at the same
        relative path in two layers is read from the last. ``tables/`` holds the shared code
        tables (YAML or CSV), loaded first and usable by every mapping's ``map:``. A file with
        ``source:`` is an inbound mapping, one with ``target:`` an outbound one.
        ``full_validation`` is described on the class.

        Raises:
            MappingSpecError: the first problem, naming file, line and key.
        """
        roots = layers(directory)
        for root in roots:
            if not root.is_dir():
                raise MappingSpecError(str(root), None, "", "the mappings directory does not exist")
        inbound: list[CompiledMapping] = []
        outbound: list[CompiledOutbound] = []
        sites: list[tuple[SiteSpec, str, Any, str]] = []
        ids: dict[str, str] = {}
        files = mapping_files(roots)
        tables = load_tables(files.tables)
        for path in files.mappings:
            file = str(path)
            data, lines = read_yaml(path, MappingSpecError)
            if not isinstance(data, dict):
                raise MappingSpecError(
                    file, 1, "", "expected a mapping of keys at the top of the file"
                )
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            if "target" in data:
                out_spec: OutboundSpec = _validate(OutboundSpec, data, file, lines)
                outbound.append(compile_outbound(out_spec, file, lines))
                mapping_id = out_spec.id
            elif "extends" in data:
                site_spec: SiteSpec = _validate(SiteSpec, data, file, lines)
                sites.append((site_spec, file, lines, sha))
                mapping_id = site_spec.id
            elif "source" in data:
                in_spec: InboundSpec = _validate(InboundSpec, data, file, lines)
                inbound.append(compile_inbound(in_spec, file, lines, sha, tables=tables))
                mapping_id = in_spec.id
            else:
                raise MappingSpecError(
                    file,
                    1,
                    "",
                    "expected source: (an inbound mapping), extends: (a site mapping) "
                    "or target: (an outbound mapping)",
                )
            if mapping_id in ids:
                raise MappingSpecError(
                    file,
                    lines.get(("id",)),
                    "id",
                    f"id {mapping_id!r} is also used by {ids[mapping_id]}",
                )
            ids[mapping_id] = file
        compiled = {m.id: m for m in inbound}
        try:
            ordered = site_order([s for s, *_ in sites], sites)
        except ValueError as exc:
            raise MappingSpecError(sites[0][1], None, "extends", str(exc)) from None
        for site_spec, file, lines, sha in ordered:
            base = compiled.get(site_spec.extends)
            if base is None:
                reason = f"no inbound mapping has id {site_spec.extends!r}"
                raise MappingSpecError(file, lines.get(("extends",)), "extends", reason)
            site = compile_site(site_spec, file, lines, sha, base)
            compiled[site.id] = site
            inbound.append(site)
        declared = [*(m.events for m in inbound), *(o.spec.target.events for o in outbound)]
        fhir = load_fhir(files.fhir, tables, hl7_events=_hl7_events(declared))
        return cls(inbound, outbound, full_validation=full_validation, fhir=fhir)

    @property
    def refs(self) -> tuple[MappingRef, ...]:
        """Every inbound mapping's id and content hash."""
        return tuple(MappingRef(id=m.id, sha256=m.sha256) for m in self._inbound_list)

    def supports(self, event: str, version: str, adapter: str | None = None) -> bool:
        """Tell whether an inbound HL7 v2 mapping handles ``event`` (``ADT^A01``) in ``version``.

        With ``adapter``, a site mapping for that adapter counts too.
        """
        if (event, version) in self._inbound:
            return True
        return adapter is not None and (adapter, event, version) in self._sites

    def map_hl7v2(
        self, message: Message, ctx: MapContext, *, trace: list[TraceStep] | None = None
    ) -> MapResult:
        """Map a tokenized HL7 v2 message to a validated FHIR R4 message Bundle.

        ``trace``, for dry runs only (it receives the patient's values), gets one TraceStep per
        element written; leaving it out costs nothing.

        Raises:
            NoMappingError: no mapping for the message's event and version.
            MappingError: a rule failed; names the mapping file, rule and source path.
            CanonicalError: the Bundle is not valid FHIR R4.
        """
        mapping = self._mapping_for(message, ctx.source)
        return map_hl7v2(
            mapping,
            message,
            ctx,
            self._refs[id(mapping)],
            trace=trace,
            full_validation=self.full_validation,
        )

    def map_fhir(
        self, data: Any, ctx: MapContext, *, trace: list[TraceStep] | None = None
    ) -> MapResult:
        """Map one FHIR R4 resource or Bundle (parsed JSON); see ``broker.mapping.fhir_in``.

        Raises:
            NoMappingError: no ``mappings/fhir/`` files, or nothing in the input is supported.
            MessageError: as ``FhirMapping.map``.
        """
        if self.fhir is None:
            msg = "no FHIR inbound mapping (mappings/fhir/ is missing)"
            raise NoMappingError(msg, location="resourceType")
        return self.fhir.map(data, ctx, trace)

    def _mapping_for(self, message: Message, adapter: str | None = None) -> CompiledMapping:
        event, version = message.event, message.version
        mapping = None
        if adapter is not None and self._sites:
            mapping = self._sites.get((adapter, event, version))
        if mapping is None:
            mapping = self._inbound.get((event, version))
        if mapping is None:
            msg = f"no mapping for {event or '(no MSH-9)'} v{version or '(no MSH-12)'}"
            raise NoMappingError(msg, location="MSH-9")
        return mapping

    def unmapped(
        self, message: Message, adapter: str | None = None, result: MapResult | None = None
    ) -> list[str]:
        """The fields present in ``message`` that no rule read, per segment instance, in order.

        See ``broker.mapping.hl7v2_in.unmapped.unmapped_fields`` for the locations reported.

        Args:
            message: the parsed message.
            adapter: picks that adapter's site mapping when it has one.
            result: the message's ``map_hl7v2`` result, whose ``read`` is compared; without
                it the message is mapped again here.

        Raises:
            NoMappingError: no mapping for the message's event and version.
            MessageError: (only without ``result``) the message could not be mapped.
        """
        mapping = self._mapping_for(message, adapter)
        read = result.read if result is not None else None
        if read is None:
            read = mapping.run(message, adapter or "unmapped", "UTC")[1].seen
        return unmapped_fields(mapping, message, read)

    @property
    def hl7_versions(self) -> frozenset[str]:
        """Every HL7 v2 version an outbound mapping writes: what ``hl7_version:`` may name."""
        return frozenset(v for out in self._outbound_list for v in out.versions)

    def render_hl7v2(
        self,
        bundle: dict[str, Any],
        *,
        version: str = "2.5.1",
        control_id: str,
        receiving_application: str,
        receiving_facility: str,
        sending_application: str = "PASSERELLE",
        sending_facility: str = "",
        charset: str = "utf-8",
    ) -> str:
        """Render a canonical message Bundle as ER7 text with the outbound mapping for its event.

        ``version`` is MSH-12 and selects the mapping's version-specific fields and segments.
        ``charset`` is the Python codec the text will be encoded in (the subscriber's
        ``charset``): MSH-18 names it with its HL7 table 0211 code (v2.5.1 §2.14.9.18).

        Raises:
            ConfigurationError: HL7 table 0211 has no code for ``charset``.
            NoMappingError: no outbound mapping renders the Bundle's event in ``version``.
            MappingError: the Bundle could not be rendered.
        """
        entries = bundle.get("entry") or [{}]
        header = entries[0].get("resource") or {}
        trigger = (header.get("eventCoding") or {}).get("code", "")
        out = self._outbound.get(trigger)
        if out is None:
            msg = f"no outbound HL7 v2 mapping for event {trigger or '(none)'}"
            raise NoMappingError(
                msg,
                location="MessageHeader.eventCoding",
            )
        code = charset_code(charset, version)
        if code is None:
            msg = f"HL7 table 0211 has no code for the character set {charset!r} (MSH-18)"
            raise ConfigurationError(msg)
        try:
            return out.render(
                bundle,
                version=version,
                control_id=control_id,
                receiving_application=receiving_application,
                receiving_facility=receiving_facility,
                sending_application=sending_application,
                sending_facility=sending_facility,
                charset_code=code,
            )
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            msg = f"the Bundle could not be rendered as HL7 v2 ({type(exc).__name__})"
            raise MappingError(msg, mapping=out.file) from exc


def _hl7_events(declared: list[Any]) -> dict[str, str]:
    """Trigger event → ``MSG^TRG`` for each trigger the mappings name with one message code."""
    codes: dict[str, set[str]] = {}
    for events in declared:
        for event in events:
            message, _, trigger = str(event).partition("^")
            if trigger:
                codes.setdefault(trigger, set()).add(message)
    return {t: f"{next(iter(m))}^{t}" for t, m in codes.items() if len(m) == 1}
