"""``passerelle mappings lint``: every problem of every mapping file, with its line and column.

Loading (``MappingSet.load``) stops at the first problem; lint goes on and reports them all:
YAML syntax errors, duplicate keys, schema errors (unknown or missing keys, bad values), then
what compilation checks (source paths against hl7apy's reference tables for the declared
versions, target paths against the fhir.resources R4B models, functions, maps, groups and
roles), and finally what spans files (ids, event/version pairs claimed twice). Each problem is
reported at the offending value as ``file:line:col: what is wrong; what was expected``.
"""

from __future__ import annotations

import hashlib
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from broker.errors import MappingSpecError
from broker.mapping.fhir_in import FhirProblem, load_fhir
from broker.mapping.fhir_in.spec import FhirSiteSpec, FhirSpec
from broker.mapping.files import FHIR_DIR, TABLES_DIR, mapping_files
from broker.mapping.hl7v2_in.engine import CompiledMapping, SpecProblem, compile_inbound
from broker.mapping.hl7v2_in.sites import compile_site, site_order
from broker.mapping.hl7v2_out.reverse import compile_outbound
from broker.mapping.layers import MappingRoots
from broker.mapping.spec import InboundSpec, OutboundSpec, RuleSpec, SharedTable, SiteSpec
from broker.mapping.tables import load_tables
from broker.yamlspec import LineMap, parse_yaml

__all__ = ["Problem", "lint"]

Key = tuple[str | int, ...]
Positions = dict[Key, tuple[int, int]]
"""Key path → 1-based (line, column) of its value; ``(*path, "__key__")`` → of the key."""


@dataclass(frozen=True, order=True)
class Problem:
    """One lint finding: where it is (1-based line and column) and what is wrong."""

    file: str
    line: int
    col: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.reason}"


def lint(path: MappingRoots) -> list[Problem]:
    """Lint one mapping file, or every ``*.yaml`` under a mappings root except ``tests/``.

    A mappings root may be layers (``broker.mapping.layers``, a site's directory over the base
    set): the files they make up together are linted, as ``MappingSet.load`` reads them.

    Returns:
        Every problem found, sorted by file, line and column; empty when all is well.
    """
    if not isinstance(path, Path) or not path.is_file():
        return _lint_root(path)
    problems: list[Problem] = []
    claims = _Claims()
    fhir_holder = next((d for d in path.parents if d.name == FHIR_DIR), None)
    if fhir_holder is not None:
        # A FHIR inbound file: every file of mappings/fhir/ is compiled, its problems reported.
        files = mapping_files(fhir_holder.parent)
        _lint_tables(files.tables, claims)
        found = _lint_fhir(files.fhir, claims)
        return sorted(
            p
            for p in found
            if Path(p.file) == path and not _about_broken_table(p, claims.broken_tables)
        )
    holder = next((d for d in path.parents if d.name == TABLES_DIR), None)
    if holder is not None:
        # A table file alone: its problems only (the other tables are read for name clashes).
        tables = mapping_files(holder.parent).tables
        return sorted({p for p in _lint_tables(tables, claims) if Path(p.file) == path})
    roots = (path.parent / TABLES_DIR, path.parent.parent / TABLES_DIR)
    tables_dir = next((d for d in roots if d.is_dir()), None)
    if tables_dir is not None:
        _lint_tables(mapping_files(tables_dir.parent).tables, claims)
    problems.extend(_lint_file(path, claims))
    if claims.sites:
        # A site file alone: its base is among the mappings next to it (mappings/sites/x.yaml).
        for other in mapping_files(path.parent.parent).mappings:
            if other != path:
                _lint_file(other, claims)
    problems.extend(_lint_sites(claims))
    problems.extend(claims.problems)
    # A table that does not load is reported at its own line; rules naming it are not findings.
    return sorted({p for p in problems if not _about_broken_table(p, claims.broken_tables)})


def _lint_root(roots: MappingRoots) -> list[Problem]:
    """Every problem of the files a mappings root (or its layers) is made of."""
    claims = _Claims()
    files = mapping_files(roots)
    problems = _lint_tables(files.tables, claims)
    for file in files.mappings:
        problems.extend(_lint_file(file, claims))
    problems.extend(_lint_sites(claims))
    problems.extend(claims.problems)
    problems.extend(_lint_fhir(files.fhir, claims))
    # A table that does not load is reported at its own line; rules naming it are not findings.
    return sorted({p for p in problems if not _about_broken_table(p, claims.broken_tables)})


def _lint_fhir(files: Sequence[Path], claims: _Claims) -> list[Problem]:
    """Every problem of the FHIR inbound files: schema, FHIRPath syntax (at its column), resource
    type names, system URIs, unknown shared tables and site files without their base."""
    if not files:
        return []
    problems: list[Problem] = []
    positions: dict[str, Positions] = {}
    texts: dict[str, list[str]] = {}
    for file in files:
        read = _read(file, problems)
        if read is not None:
            positions[str(file)] = read[1]
            texts[str(file)] = file.read_text(encoding="utf-8").splitlines()
            problems.extend(_fhir_schema(read[0], str(file), read[1]))
    found: list[FhirProblem] = []
    load_fhir(files, claims.tables, found)
    for problem in found:
        if problem.file not in positions:
            continue  # a YAML syntax error, reported by _read
        if problem.line is not None:
            continue  # a schema error, reported by _fhir_schema at its value
        line, col = _position(positions[problem.file], problem.key)
        if problem.column is not None:
            text = texts[problem.file][line - 1] if line <= len(texts[problem.file]) else ""
            quoted = col <= len(text) and text[col - 1] in "\"'"
            col += problem.column - 1 + int(quoted)
        where = _dotted(tuple(k for k in problem.key if k != "__key__"))
        reason = f"{where}: {problem.reason}" if where else problem.reason
        if "expected" not in problem.reason:
            reason += _fhir_expected(problem)
        problems.append(Problem(problem.file, line, col, reason))
    return problems


def _fhir_schema(data: Any, file: str, positions: Positions) -> list[Problem]:
    """Schema problems of one FHIR inbound file, each at its value with the keys expected."""
    if not isinstance(data, dict):
        reason = "the file is not a mapping of keys; expected id:, resources: or extends:, ..."
        return [Problem(file, 1, 1, reason)]
    model: type[FhirSpec | FhirSiteSpec] = FhirSiteSpec if "extends" in data else FhirSpec
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return _schema_problems(exc, model, file, positions)
    return []


def _fhir_expected(problem: FhirProblem) -> str:
    """What was expected, for a FHIR inbound problem whose reason does not say."""
    if problem.column is not None:
        return "; expected a FHIRPath expression (https://hl7.org/fhirpath/N1/)"
    if "resource type" in problem.reason:
        return "; expected a FHIR R4 resource type other than Bundle and MessageHeader"
    return "; expected a FHIR inbound file as docs/mappings.md (FHIR input) describes"


def _lint_tables(files: Sequence[Path], claims: _Claims) -> list[Problem]:
    """Every problem of the shared table files; the tables that load are kept for the mappings."""
    problems: list[Problem] = []
    unreadable: set[str] = set()
    for table_file in files:
        if table_file.suffix in (".yaml", ".yml"):
            read = _read(table_file, problems)
            if read is None:
                unreadable.add(str(table_file))
            else:
                claims.table_positions[str(table_file)] = read[1]
    found: list[MappingSpecError] = []
    claims.tables = load_tables(files, found)
    for error in found:
        claims.broken_tables.add(_table_name(Path(error.file)))
        if error.file in unreadable:
            continue
        problems.append(claims.table_problem(error, error.key))
    claims.broken_tables -= set(claims.tables)
    return problems


def _table_name(file: Path) -> str:
    """The name a table file defines: a YAML table's ``id``, else the file's stem (CSV)."""
    if file.suffix in (".yaml", ".yml"):
        try:
            _, data = parse_yaml(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return file.stem
        name = data.get("id") if isinstance(data, dict) else None
        if isinstance(name, str):
            return name
    return file.stem


def _about_broken_table(problem: Problem, broken: set[str]) -> bool:
    """A problem that only says a rule's table is missing, when that table failed to load."""
    return any(
        f"no value map {name!r}" in problem.reason or f"no shared table {name!r}" in problem.reason
        for name in broken
    )


def _lint_sites(claims: _Claims) -> list[Problem]:
    """Compile each site mapping on its base, bases first; unknown bases and cycles too."""
    problems: list[Problem] = []
    specs = [site.spec for site in claims.sites]
    try:
        ordered = site_order(specs, claims.sites)
    except ValueError as exc:
        for site in claims.sites:
            where = _position(site.positions, ("extends",))
            problems.append(Problem(site.file, *where, f"extends: {exc}; expected a base mapping"))
        return problems
    for site in ordered:
        base = claims.compiled.get(site.spec.extends)
        if base is None:
            known = ", ".join(sorted(claims.compiled)) or "(none)"
            reason = (
                f"extends: no inbound mapping has id {site.spec.extends!r}; expected one of {known}"
            )
            problems.append(Problem(site.file, *_position(site.positions, ("extends",)), reason))
            continue
        found: list[SpecProblem] = []
        lines: LineMap = {key: line for key, (line, _) in site.positions.items()}
        compiled = compile_site(site.spec, site.file, lines, site.sha, base, found)
        claims.compiled[site.spec.id] = compiled
        for problem in found:
            where = _position(site.positions, problem.path)
            problems.append(Problem(site.file, *where, f"{problem.key}: {problem.reason}"))
    return problems


# --- reading YAML with positions -----------------------------------------------------------------


def _walk(
    node: yaml.Node, path: Key, positions: Positions, problems: list[Problem], file: str
) -> None:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            where = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in seen:
                reason = f"duplicate key {key!r}; expected each key once (YAML keeps only the last)"
                problems.append(Problem(file, *where, reason))
            seen.add(key)
            positions[(*path, key, "__key__")] = where
            _walk(value_node, (*path, key), positions, problems, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), positions, problems, file)


def _read(file: Path, problems: list[Problem]) -> tuple[Any, Positions] | None:
    name = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(name, 1, 1, f"cannot read the file ({exc}); expected UTF-8 text"))
        return None
    try:
        node, data = parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        context = f" ({exc.context})" if exc.context else ""
        started = exc.context_mark
        if exc.context and started is not None and started.line + 1 != line:
            context = f" ({exc.context} started at line {started.line + 1})"
        reason = f"YAML syntax error: {exc.problem}{context}; expected well-formed YAML"
        problems.append(Problem(name, line, col, reason))
        return None
    except yaml.YAMLError as exc:
        problems.append(Problem(name, 1, 1, f"YAML syntax error: {exc}; expected well-formed YAML"))
        return None
    positions: Positions = {}
    if node is not None:
        _walk(node, (), positions, problems, name)
    return data, positions


def _position(positions: Positions, key: Key) -> tuple[int, int]:
    for end in range(len(key), -1, -1):
        found = positions.get(key[:end])
        if found is not None:
            return found
    return (1, 1)


def _dotted(key: Key) -> str:
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_DOTTED_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _undotted(dotted: str) -> Key:
    """``segments[2].fields[0].from`` → ``("segments", 2, "fields", 0, "from")``."""
    return tuple(int(index) if index else name for name, index in _DOTTED_PART.findall(dotted))


# --- schema errors -------------------------------------------------------------------------------


def _allowed_keys(model: type[BaseModel], loc: Key) -> list[str]:
    """The keys the model accepts at ``loc`` (the mapping holding an unknown key)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current, list if isinstance(part, int) else None)
        if isinstance(part, int):
            args = typing.get_args(current)
            current = args[0] if args else None
        elif isinstance(current, type) and issubclass(current, BaseModel):
            fields = {(f.alias or n): f for n, f in current.model_fields.items()}
            info = fields.get(part)
            current = info.annotation if info is not None else None
        else:
            args = typing.get_args(current)
            current = args[1] if len(args) == 2 else None
    current = _unwrap(current, None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(f.alias or n for n, f in current.model_fields.items())
    return []


def _unwrap(annotation: Any, want: type | None) -> Any:
    """From ``X | None`` or ``str | list[X]``, the member that is a model (or ``want``)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(annotation):
            if want is not None and typing.get_origin(arg) is want:
                return arg
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
            if want is None and typing.get_origin(arg) in (list, dict):
                return arg
    return annotation


def _schema_problems(
    exc: ValidationError, model: type[BaseModel], file: str, positions: Positions
) -> list[Problem]:
    found = []
    for err in exc.errors(include_url=False):
        # pydantic puts union members and validator names into loc; keep the document's keys.
        loc: Key = ()
        for part in err["loc"]:
            if (*loc, part) in positions or (*loc, part, "__key__") in positions:
                loc = (*loc, part)
        kind = err["type"]
        if kind == "extra_forbidden":
            name = err["loc"][-1]
            parent = loc[:-1] if loc and loc[-1] == name else loc
            allowed = ", ".join(_allowed_keys(model, parent))
            reason = f"unknown key {name!r}; expected one of {allowed}"
            where = positions.get((*parent, name, "__key__")) or _position(positions, parent)
        elif kind == "missing":
            name = err["loc"][-1]
            holder = _dotted(loc) or "the top of the file"
            reason = f"missing key {name!r}; expected it in {holder}"
            where = _position(positions, loc)
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            given = err.get("input")
            if message.startswith("Input should be ") and isinstance(given, str | int | float):
                # pydantic's own wording: "Input should be 'hl7v2'" → what was given, expected.
                message = (
                    f"{given!r} is not allowed; expected {message.removeprefix('Input should be ')}"
                )
            reason = f"invalid {_dotted(loc) or 'file'}; {message}"
            where = _position(positions, loc)
        found.append(Problem(file, *where, reason))
    return found


# --- one file and the whole set ------------------------------------------------------------------


@dataclass(frozen=True)
class _Site:
    spec: SiteSpec
    file: str
    positions: Positions
    sha: str


class _Claims:
    """What must be unique across files (ids, event/version pairs), and what sites extend."""

    def __init__(self) -> None:
        self.compiled: dict[str, CompiledMapping] = {}
        self.sites: list[_Site] = []
        self.ids: dict[str, str] = {}
        self.events: dict[tuple[str, str], str] = {}
        self.problems: list[Problem] = []
        self.tables: dict[str, SharedTable] = {}
        self.broken_tables: set[str] = set()
        """Names of tables whose file has problems and did not load."""
        self.table_positions: dict[str, Positions] = {}
        """YAML table file → positions of its keys (CSV problems are at the row's column 1)."""

    def table_problem(self, error: MappingSpecError, key: str | Key) -> Problem:
        """A problem in a table file, at the row (CSV) or value (YAML) it names."""
        positions = self.table_positions.get(error.file)
        path = _undotted(key) if isinstance(key, str) else key
        if positions is not None:
            at_key = positions.get((*path, "__key__")) if "unknown key" in error.reason else None
            line, col = at_key or _position(positions, path)
        else:
            line, col = error.line or 1, 1
        what = f"{error.key}: {error.reason}" if error.key else error.reason
        if "expected" not in error.reason:
            entry = path[:1] in (("values",), ("default",))
            what += (
                "; expected a value that fits every element a rule maps it to"
                if entry
                else "; expected a table as docs/mappings.md describes"
            )
        return Problem(error.file, line, col, what)

    def claim_id(self, mapping_id: str, file: str, where: tuple[int, int]) -> None:
        other = self.ids.setdefault(mapping_id, file)
        if other != file:
            reason = f"id {mapping_id!r} is also used by {other}; expected a unique id"
            self.problems.append(Problem(file, *where, reason))

    def claim_events(self, spec: InboundSpec, file: str, positions: Positions) -> None:
        for index, event in enumerate(spec.source.events):
            for version in spec.source.versions:
                other = self.events.setdefault((event, version), file)
                if other != file:
                    reason = (
                        f"{event} v{version} is already mapped by {other}; "
                        "expected one mapping per event and version"
                    )
                    where = _position(positions, ("source", "events", index))
                    self.problems.append(Problem(file, *where, reason))


def _lint_file(path: Path, claims: _Claims) -> list[Problem]:
    file = str(path)
    problems: list[Problem] = []
    read = _read(path, problems)
    if read is None:
        return problems
    data, positions = read
    if not isinstance(data, dict):
        reason = "the file is not a mapping of keys; expected id:, source: or target:, ..."
        return [*problems, Problem(file, 1, 1, reason)]
    model: type[InboundSpec | OutboundSpec | SiteSpec]
    if "target" in data:
        model = OutboundSpec
    elif "extends" in data:
        model = SiteSpec
    elif "source" in data:
        model = InboundSpec
    else:
        reason = (
            "neither source:, extends: nor target:; "
            "expected source: (inbound), extends: (site) or target: (outbound)"
        )
        return [*problems, Problem(file, 1, 1, reason)]
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        return problems + _schema_problems(exc, model, file, positions)
    claims.claim_id(spec.id, file, _position(positions, ("id",)))
    lines: LineMap = {key: line for key, (line, _) in positions.items()}
    if isinstance(spec, OutboundSpec):
        try:
            compile_outbound(spec, file, lines)
        except MappingSpecError as exc:
            where = _position(positions, _undotted(exc.key))
            problems.append(Problem(file, *where, f"{exc.key}: {exc.reason}"))
        return problems
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if isinstance(spec, SiteSpec):
        claims.sites.append(_Site(spec, file, positions, sha))
        return problems
    claims.claim_events(spec, file, positions)
    found: list[SpecProblem] = []
    claims.compiled[spec.id] = compile_inbound(spec, file, lines, sha, found, claims.tables)
    for problem in found:
        if problem.file != file:
            # A shared table's entry does not fit an element it is mapped to: the table's line.
            claims.problems.append(claims.table_problem(problem, problem.path))
            continue
        where = _position(positions, problem.path)
        problems.append(Problem(file, *where, f"{problem.key}: {problem.reason}"))
    problems.extend(_unused_maps(spec, file, positions))
    return problems


def _unused_maps(spec: InboundSpec, file: str, positions: Positions) -> list[Problem]:
    used: set[str] = set()

    def visit(rules: list[RuleSpec]) -> None:
        for rule in rules:
            if rule.map:
                used.add(rule.map)
            visit(rule.rules or [])

    for resource in spec.resources:
        visit(resource.rules)
    return [
        Problem(
            file,
            *_position(positions, ("maps", name, "__key__")),
            f"value map {name!r} is never used; expected a rule with map: {name}, or remove it",
        )
        for name in spec.maps
        if name not in used
    ]
