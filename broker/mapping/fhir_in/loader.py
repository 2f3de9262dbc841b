"""Load ``mappings/fhir/``: the base FHIR inbound file and the site files, compiled once.

Every FHIRPath expression is parsed and checked here (``fhirpath.compile_path``), resource type
names against the fhir.resources R4B models, system URIs for form, and code tables against the
shared tables of ``mappings/tables/``. ``problems`` collects every problem for lint instead of
raising the first.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from broker.errors import MappingSpecError
from broker.mapping.fhir_in.fhirpath import Expression, FHIRPathSyntaxError, compile_path
from broker.mapping.fhir_in.mapper import CompiledType, FhirMapping, Require, Site
from broker.mapping.fhir_in.normalise import Normaliser, Table
from broker.mapping.fhir_in.spec import FhirSiteSpec, FhirSpec, NormaliseSpec
from broker.mapping.spec import SharedTable
from broker.mapping.targets import fhir_model, resource_base
from broker.yamlspec import LineMap, read_yaml, validation_errors

__all__ = ["FhirProblem", "load_fhir"]

_URI = re.compile(r"^(urn:oid:[0-2](\.(0|[1-9][0-9]*))+|urn:uuid:[0-9a-f-]{36}|https?://\S+)$")
"""What a system may be: an OID (``urn:oid:``), a UUID URN or an http(s) URL (FHIR R4 datatype uri)."""

Key = tuple[str | int, ...]
KEY = "__key__"
"""Last part of a key path that means the key itself (a bad key), not its value."""


@dataclass(frozen=True)
class FhirProblem:
    """A problem of a FHIR inbound file: its key path and, for FHIRPath, the column inside it."""

    file: str
    key: Key
    reason: str
    column: int | None = None
    line: int | None = None
    """Given when the problem was found by line (YAML syntax, schema), not by key."""


class _Problems:
    def __init__(self, file: str, lines: LineMap, found: list[FhirProblem] | None) -> None:
        self.file = file
        self.lines = lines
        self.found = found

    def add(self, key: Key, reason: str, column: int | None = None) -> None:
        if self.found is None:
            dotted = ".".join(str(k) for k in key if k != KEY)
            where = f"{reason} (column {column} of the expression)" if column else reason
            raise MappingSpecError(self.file, self.lines.get(key), dotted, where)
        self.found.append(FhirProblem(self.file, key, reason, column))

    def path(self, text: str, key: Key) -> Expression | None:
        try:
            return compile_path(text)
        except FHIRPathSyntaxError as exc:
            self.add(key, exc.reason, exc.column)
            return None


def load_fhir(
    files: Sequence[Path],
    tables: dict[str, SharedTable],
    problems: list[FhirProblem] | None = None,
    *,
    hl7_events: dict[str, str] | None = None,
) -> FhirMapping | None:
    """Load the FHIR inbound files; ``None`` when there is no base file (FHIR input is refused).

    ``files`` are a mappings root's ``fhir/`` files (``MappingFiles.fhir``, every layer's).
    ``hl7_events`` is ``FhirMapping.hl7_events``: what the HL7 v2 mappings call each trigger.

    Raises:
        MappingSpecError: the first problem, naming file, line and key (unless ``problems``).
    """
    base: FhirMapping | None = None
    sites: list[tuple[FhirSiteSpec, str, LineMap, str]] = []
    for path in files:
        file = str(path)
        try:
            data, lines = read_yaml(path, MappingSpecError)
        except MappingSpecError as exc:
            if problems is None:
                raise
            problems.append(FhirProblem(file, (), exc.reason, line=exc.line))
            continue
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        report = _Problems(file, lines, problems)
        if not isinstance(data, dict):
            report.add((), "expected a mapping of keys at the top of the file")
            continue
        if "extends" in data:
            site = _validate(FhirSiteSpec, data, report)
            if site is not None:
                sites.append((site, file, lines, sha))
            continue
        spec = _validate(FhirSpec, data, report)
        if spec is None:
            continue
        if base is not None:
            report.add(("id",), f"a second base FHIR inbound file; {base.file} is the base")
            continue
        base = _compile_base(spec, file, sha, report, tables, hl7_events or {})
    for site, file, lines, sha in sites:
        report = _Problems(file, lines, problems)
        if base is None or site.extends != base.id:
            known = base.id if base is not None else "(none)"
            report.add(
                ("extends",), f"no FHIR inbound file has id {site.extends!r}; expected {known}"
            )
            continue
        normaliser = _normaliser(site.normalise, report, tables, base.normaliser, lines)
        compiled = Site(site.id, file, sha, frozenset(site.adapters), normaliser)
        for adapter in site.adapters:
            other = base.sites.get(adapter)
            if other is not None:
                report.add(("adapters",), f"adapter {adapter} is already served by {other.file}")
                continue
            base.sites[adapter] = compiled
    return base


def _validate(model: type[BaseModel], data: dict[str, Any], report: _Problems) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        found = validation_errors(exc, report.file, report.lines, MappingSpecError)
        if report.found is None:
            raise found[0] from None
        for error in found:
            problem = FhirProblem(report.file, (), f"{error.key}: {error.reason}", line=error.line)
            report.found.append(problem)
        return None


def _compile_base(
    spec: FhirSpec,
    file: str,
    sha: str,
    report: _Problems,
    tables: dict[str, SharedTable],
    hl7_events: dict[str, str],
) -> FhirMapping:
    _uri(spec.event_system, ("event-system",), report)
    types: dict[str, CompiledType] = {}
    for name, type_spec in spec.resources.items():
        key: Key = ("resources", name)
        model = fhir_model(name)
        if (
            model is None
            or model.__name__ != name
            or not issubclass(model, resource_base())
            or name in ("Bundle", "MessageHeader")
        ):
            reason = f"{name!r} is not a FHIR R4 resource type this file can accept"
            report.add((*key, KEY), reason)
            continue
        patient = None
        if type_spec.patient is not None:
            patient = report.path(type_spec.patient, (*key, "patient"))
        elif name != "Patient":
            report.add(key, "patient: is required: a FHIRPath giving the Reference to the patient")
        requires = []
        for index, require in enumerate(type_spec.require):
            check = report.path(require.check, (*key, "require", index, "check"))
            if check is not None:
                requires.append(Require(check, require.reason))
        line = report.lines.get(key)
        types[name] = CompiledType(name, patient, tuple(requires), line)
    normaliser = _normaliser(spec.normalise, report, tables, None, report.lines)
    return FhirMapping(
        spec.id, file, sha, spec.event_system, types, normaliser, {}, dict(tables), hl7_events
    )


def _uri(text: str, key: Key, report: _Problems) -> None:
    if not _URI.match(text):
        reason = f"{text!r} is not a system URI; expected urn:oid:…, urn:uuid:… or http(s)://…"
        report.add(key, reason)


def _normaliser(
    spec: NormaliseSpec,
    report: _Problems,
    tables: dict[str, SharedTable],
    base: Normaliser | None,
    lines: LineMap,
) -> Normaliser:
    def table(values: dict[str, str], name: str, inherited: Table | None) -> Table:
        entries: dict[str, Any] = dict(inherited.values) if inherited else {}
        where = dict(inherited.lines) if inherited else {}
        for source, target in values.items():
            key: Key = ("normalise", name, source)
            _uri(source, (*key, KEY), report)
            _uri(target, key, report)
            entries[source] = target
            where[source] = (report.file, lines.get(key))
        return Table(entries, where)

    identifiers = table(
        spec.identifier_systems,
        "identifier-systems",
        base.identifier_systems if base else None,
    )
    systems = table(spec.code_systems, "code-systems", base.code_systems if base else None)
    codes = dict(base.codes) if base else {}
    for index, code in enumerate(spec.codes):
        key: Key = ("normalise", "codes", index)
        _uri(code.system, (*key, "system"), report)
        shared = tables.get(code.table)
        if shared is None:
            known = ", ".join(sorted(tables)) or "(none)"
            report.add((*key, "table"), f"no shared table {code.table!r}; expected one of {known}")
            continue
        where = {c: (shared.file, shared.lines.get(("values", c))) for c in shared.values}
        codes[code.system] = (code.table, Table(dict(shared.values), where))
    return Normaliser(identifiers, systems, codes)
