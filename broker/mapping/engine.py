"""The inbound mapping engine: an InboundSpec compiled once into objects that map a Message.

Compilation resolves everything that does not depend on a message: source paths are parsed,
target paths are checked against the fhir.resources R4B models, functions and value maps are
looked up and their args validated. Running a compiled mapping on a message only reads
segments and builds plain dicts; nothing is parsed from YAML again.

Scopes: the whole message is the root scope; each instance of a declared segment group (an ORU^R01
PATIENT_RESULT, ORDER_OBSERVATION or OBSERVATION, v2.5.1 §7.3.1) is a child scope. A source path
reads the nearest scope holding its segment, so an OBSERVATION's rule reading ``OBR-7`` sees its
own order's OBR. A ``reference:`` names a resource role: the nearest instance in scope or above,
or, for a list target (``result[]``), every instance inside the current scope.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import typing
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from broker.errors import CanonicalError, MappingError, MappingSpecError
from broker.mapping.context import TraceStep
from broker.mapping.functions import INBOUND, Env, SourceValue, Transform, is_code
from broker.mapping.spec import Condition, InboundSpec, ResourceSpec, RuleSpec, ValueMapSpec
from broker.parsing.hl7v2 import Message, Path, Segment, parse_path
from broker.yamlspec import LineMap

__all__ = ["CompiledMapping", "Instance", "Scope", "compile_inbound", "fhir_model", "resource_id"]

NAMESPACE = uuid.UUID("6f1c3c52-4d8e-5a8f-9a57-0b1e5a7c2d11")
"""uuid5 namespace of every resource id Passerelle derives (fixed forever: ids must be stable)."""

V2_0003 = "http://terminology.hl7.org/CodeSystem/v2-0003"

ENGINE_READS = frozenset({("MSH", n) for n in (1, 2, 3, 4, 9, 10, 12, 18)})
"""MSH fields the engine itself reads: delimiters, MSH-3/4 sender, MSH-9 type, MSH-10 control
id, MSH-12 version, MSH-18 charset (v2.5.1 §2.14.9)."""

Key = tuple[str | int, ...]


_NAMESPACE_BYTES = NAMESPACE.bytes


def resource_id(source: str, control_id: str, role: str) -> str:
    """A deterministic resource id: uuid5 of the source adapter, MSH-10 and the resource role.

    Computed as RFC 4122 §4.3 describes (SHA-1 of namespace + name, version and variant bits
    set) without building ``uuid.UUID`` objects: equal to ``uuid.uuid5`` and a third of its cost,
    which showed in the worker profile (several ids per message).
    """
    name = f"{source}|{control_id}|{role}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def fhir_model(type_name: str) -> type[BaseModel] | None:
    """The fhir.resources R4B model class for a resource or element type name, if any."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model: type[BaseModel] = get_fhir_model_class(type_name)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
    return model


def _resource_base() -> type[BaseModel]:
    from fhir.resources.R4B.resource import Resource

    base: type[BaseModel] = Resource
    return base


# --- compile-time error helper -------------------------------------------------------------------


def _dotted(key: Key) -> str:
    dotted = ""
    for part in key:
        dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else part)
    return dotted


class SpecProblem(MappingSpecError):
    """A MappingSpecError that keeps its key path as a tuple (lint turns it into a column)."""

    def __init__(self, file: str, line: int | None, path: Key, reason: str) -> None:
        super().__init__(file, line, _dotted(path), reason)
        self.path = path


_T = typing.TypeVar("_T")


@dataclass(frozen=True)
class _Where:
    """Where compilation is: the file, its line map and versions, and what it has seen.

    ``problems`` is None when loading (the first problem raises) and a list when linting
    (``attempt`` records each problem and compilation goes on with the next part).
    """

    file: str
    lines: LineMap
    versions: tuple[str, ...] = ()
    problems: list[SpecProblem] | None = None
    reads: set[tuple[str, int]] = field(default_factory=set)
    """(segment, field) of every source path compiled: what the unmapped report leaves out."""

    def error(self, key: Key, reason: str) -> SpecProblem:
        line = None
        for end in range(len(key), -1, -1):
            if key[:end] in self.lines:
                line = self.lines[key[:end]]
                break
        return SpecProblem(self.file, line, key, reason)

    def attempt(self, compile_part: Callable[[], _T]) -> _T | None:
        """Run one part of the compilation; when linting, record its problem and go on."""
        if self.problems is None:
            return compile_part()
        try:
            return compile_part()
        except SpecProblem as exc:
            if not any(p.path == exc.path and p.reason == exc.reason for p in self.problems):
                self.problems.append(exc)
            return None


# --- scopes --------------------------------------------------------------------------------------


Pin = tuple[Segment, int]


class Scope:
    """The message, one instance of a segment group, or one repetition of a looped field.

    ``pins`` maps (segment name, field number) to the segment and repetition a field loop
    (``each: PV1-7(*)``) is on: inside the loop, ``PV1-7`` reads that repetition.
    """

    __slots__ = ("by_name", "group", "local", "parent", "pins", "segments")

    def __init__(
        self,
        group: str | None,
        segments: list[Segment],
        parent: Scope | None,
        local: frozenset[str] = frozenset(),
        pins: dict[tuple[str, int], Pin] | None = None,
    ) -> None:
        self.group = group
        self.segments = segments
        self.parent = parent
        self.local = local
        """Segment names that belong to this group only: never looked up in the parents."""
        inherited = parent.pins if parent is not None else {}
        self.pins: dict[tuple[str, int], Pin] = {**inherited, **pins} if pins else inherited
        by_name: dict[str, list[Segment]] = {}
        for segment in segments:
            by_name.setdefault(segment.name, []).append(segment)
        self.by_name = by_name

    def find(self, name: str) -> list[Segment]:
        """The segments called ``name`` in the nearest scope (self, then parents) that has one."""
        scope: Scope | None = self
        while scope is not None:
            found = scope.by_name.get(name)
            if found:
                return found
            if name in scope.local:
                return []
            scope = scope.parent
        return []

    def within(self, other: Scope) -> bool:
        """Tell whether this scope is ``other`` or nested inside it."""
        scope: Scope | None = self
        while scope is not None:
            if scope is other:
                return True
            scope = scope.parent
        return False


# --- source paths --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    text: str
    path: Path
    all_segments: bool

    @property
    def repeats(self) -> bool:
        return self.all_segments or self.path.repetition is None

    def pinned(self, scope: Scope) -> SourceValue | None:
        """The looped repetition when a field loop is on this path's field, else None."""
        pin = scope.pins.get((self.path.segment, self.path.field))
        if pin is None:
            return None
        segment, number = pin
        p = self.path
        raw = segment.repetitions(p.field)[number - 1]
        if p.component is not None:
            comps = raw.split(segment.delims.component)
            raw = comps[p.component - 1] if p.component <= len(comps) else ""
            if p.sub is not None:
                subs = raw.split(segment.delims.subcomponent)
                raw = subs[p.sub - 1] if p.sub <= len(subs) else ""
        return SourceValue(raw, segment, p, number) if raw and raw != '""' else None

    def loop(self, scope: Scope) -> list[Scope]:
        """One child scope pinned to each repetition this path reads (``each: PV1-7(*)``)."""
        key = (self.path.segment, self.path.field)
        return [
            Scope(None, [], scope, pins={key: (value.segment, value.rep)})
            for value in self.read(scope)
        ]

    def read(self, scope: Scope) -> list[SourceValue]:
        p = self.path
        if scope.pins and (p.segment, p.field) in scope.pins:
            value = self.pinned(scope)
            return [value] if value is not None else []
        segments = scope.find(p.segment)
        if p.segment_index is not None:
            segments = segments[p.segment_index - 1 : p.segment_index]
        elif not self.all_segments:
            segments = segments[:1]
        out: list[SourceValue] = []
        for segment in segments:
            reps = segment.repetitions(p.field)
            chosen: Iterable[tuple[int, str]]
            if p.repetition is None:
                chosen = enumerate(reps, 1)
            elif p.repetition <= len(reps):
                chosen = ((p.repetition, reps[p.repetition - 1]),)
            else:
                continue
            for number, rep in chosen:
                raw = rep
                if p.component is not None:
                    comps = rep.split(segment.delims.component)
                    raw = comps[p.component - 1] if p.component <= len(comps) else ""
                    if p.sub is not None:
                        subs = raw.split(segment.delims.subcomponent)
                        raw = subs[p.sub - 1] if p.sub <= len(subs) else ""
                if raw and raw != '""':
                    out.append(SourceValue(raw, segment, p, number))
        return out

    def first(self, scope: Scope) -> SourceValue | None:
        p = self.path
        if scope.pins and (p.segment, p.field) in scope.pins:
            return self.pinned(scope)
        if self.all_segments or p.repetition is None:
            return next(iter(self.read(scope)), None)
        segments = scope.find(p.segment)
        index = (p.segment_index or 1) - 1
        if index >= len(segments):
            return None
        segment = segments[index]
        fields = segment.fields
        if p.field >= len(fields):
            return None
        rep = fields[p.field]
        if not rep:
            return None
        d = segment.delims
        if d.repetition in rep and not (segment.name == "MSH" and p.field <= 2):
            reps = rep.split(d.repetition)
            if p.repetition > len(reps):
                return None
            rep = reps[p.repetition - 1]
        elif p.repetition > 1:
            return None
        raw = rep
        if p.component is not None:
            comps = rep.split(d.component)
            raw = comps[p.component - 1] if p.component <= len(comps) else ""
            if p.sub is not None:
                subs = raw.split(d.subcomponent)
                raw = subs[p.sub - 1] if p.sub <= len(subs) else ""
        if not raw or raw == '""':
            return None
        return SourceValue(raw, segment, p, p.repetition)


@lru_cache(maxsize=512)
def _field_count(segment: str, version: str) -> int | None:
    """How many fields hl7apy's reference tables define for a segment, None if unknown."""
    from hl7apy import load_reference
    from hl7apy.exceptions import HL7apyException

    try:
        reference = load_reference(segment, "Segment", version)
    except (HL7apyException, KeyError, ValueError):
        return None
    return len(reference[1])


def _check_exists(path: Path, text: str, where: _Where, key: Key) -> None:
    # Z-segments are site-defined (v2.5.1 §2.8.2): no reference table knows them.
    if path.segment.startswith("Z") or not where.versions:
        return
    counts = [c for c in (_field_count(path.segment, v) for v in where.versions) if c is not None]
    versions = ", ".join(where.versions)
    if not counts:
        reason = (
            f"{text!r}: {path.segment} is not a segment of HL7 v{versions}; "
            "expected a segment of those versions or a Z-segment"
        )
        raise where.error(key, reason)
    if path.field > max(counts):
        reason = (
            f"{text!r}: {path.segment} has {max(counts)} fields in HL7 v{versions}; "
            f"expected a field number from 1 to {max(counts)}"
        )
        raise where.error(key, reason)


def _source(text: str, where: _Where, key: Key) -> _Source:
    try:
        path = parse_path(text)
    except ValueError as exc:
        raise where.error(key, str(exc)) from None
    _check_exists(path, text, where, key)
    where.reads.add((path.segment, path.field))
    head = text.strip().split("-", 1)[0]
    return _Source(text, path, head.endswith("(*)"))


# --- conditions and value maps -------------------------------------------------------------------


@dataclass(frozen=True)
class _Condition:
    source: _Source | None
    """None for a segment test (``path: PV1``): is the segment in scope?"""
    segment: str
    spec: Condition

    def holds(self, scope: Scope) -> bool:
        if self.source is None:
            return bool(scope.find(self.segment)) == self.spec.present
        value = self.source.first(scope)
        if self.spec.present is not None:
            return (value is not None) == self.spec.present
        code = value.comp(1).strip() if value is not None else ""
        if self.spec.equals is not None:
            return code == self.spec.equals
        return code in (self.spec.in_ or ())


_SEGMENT = re.compile(r"^[A-Z][A-Z0-9]{2}$")


def _condition(spec: Condition | None, where: _Where, key: Key) -> _Condition | None:
    if spec is None:
        return None
    if _SEGMENT.match(spec.path):
        if spec.present is None:
            reason = "a segment name alone can only be tested with present: true|false"
            raise where.error((*key, "path"), reason)
        return _Condition(None, spec.path, spec)
    return _Condition(_source(spec.path, where, (*key, "path")), "", spec)


@dataclass(frozen=True)
class _ValueMap:
    name: str
    spec: ValueMapSpec

    def apply(self, value: SourceValue, env: Env) -> Any:
        code = value.comp(1).strip()
        found = self.spec.values.get(code)
        if found is None:
            found = self.spec.default
            if found is None:
                table = self.spec.system or f"value map {self.name}"
                env.warn(
                    "unknown-code", value, f"the code is not in {table}; the element was left out"
                )
                return None
        return _clone(found)


# --- target paths, checked against fhir.resources -------------------------------------------------


def _element_type(annotation: Any) -> tuple[bool, str | None]:
    """(is a list, element type name or None for primitives) of a fhir.resources field."""
    is_list = False
    name: str | None = None
    stack = [annotation]
    while stack:
        current = stack.pop()
        origin = typing.get_origin(current)
        if origin in (list, typing.List):  # noqa: UP006 - fhir.resources annotates with typing.List
            is_list = True
        if (
            isinstance(current, type)
            and current.__name__.endswith("Type")
            and current.__module__ == "abc"
        ):
            name = current.__name__[:-4]
        stack.extend(typing.get_args(current))
    return is_list, name


Step = tuple[str, bool]


_PRIMITIVE_COMPATIBLE = {
    "string": frozenset({"string", "markdown"}),
    "code": frozenset({"code", "string"}),
    "date": frozenset({"date", "dateTime"}),
}


def _primitive_name(annotation: Any) -> str | None:
    stack = [annotation]
    while stack:
        current = stack.pop()
        for meta in getattr(current, "__metadata__", ()):
            name = type(meta).__name__
            return name[:1].lower() + name[1:]
        stack.extend(typing.get_args(current))
    return None


@dataclass(frozen=True)
class _Target:
    """A checked target path: its steps and the FHIR type of the element it writes."""

    steps: tuple[Step, ...]
    model: type[BaseModel] | None
    type_name: str | None
    is_list: bool
    annotation: Any
    enum: frozenset[str] | None

    def accepts(self, returns: str) -> bool:
        if self.type_name is None:
            return True
        return self.type_name == returns or self.type_name in _PRIMITIVE_COMPATIBLE.get(returns, ())

    def check_constant(self, value: Any, where: _Where, key: Key) -> None:
        """Validate a constant from the YAML (value:, default:, a map value) at load."""
        if self.annotation is None:
            return
        try:
            TypeAdapter(self.annotation).validate_python([value] if self.is_list else value)
        except ValidationError as exc:
            reason = exc.errors(include_url=False, include_input=False)[0]["msg"]
            msg = f"the value is not a valid FHIR {self.type_name} for this element: {reason}"
            raise where.error(key, msg) from None
        if self.enum is not None and value not in self.enum:
            allowed = ", ".join(sorted(self.enum))
            raise where.error(key, f"{value!r} is not in the element's value set ({allowed})")


def _target(text: str, model: type[BaseModel] | None, where: _Where, key: Key) -> _Target:
    steps: list[Step] = []
    parts = text.split(".")
    type_name: str | None = None
    is_list = False
    annotation: Any = None
    enum: frozenset[str] | None = None
    for index, part in enumerate(parts):
        append = part.endswith("[]")
        name = part[:-2] if append else part
        if not name.isidentifier():
            raise where.error(
                key,
                f"{text!r} is not an element path; "
                "expected names such as identifier[] or period.start",
            )
        if append and index != len(parts) - 1:
            raise where.error(
                key,
                f"{text!r}: only the last element may end with []; build list items with rules:",
            )
        steps.append((name, append))
        if model is None:
            type_name, annotation, enum = None, None, None
            continue
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        info = fields.get(name)
        if info is None or name in ("resourceType", "fhir_comments") or name.endswith("__ext"):
            names = [
                n for n in fields if n[0] != "_" and n not in ("resourceType", "fhir_comments")
            ]
            close = difflib.get_close_matches(name, names, n=3)
            expected = " or ".join(close) if close else f"an element of {model.__name__}"
            reason = f"{model.__name__} has no element {name!r} (FHIR R4); expected {expected}"
            raise where.error(key, reason)
        is_list, complex_name = _element_type(info.annotation)
        if is_list and not append:
            raise where.error(key, f"{model.__name__}.{name} repeats; write {name}[] to add to it")
        if append and not is_list:
            raise where.error(key, f"{model.__name__}.{name} does not repeat; drop the []")
        if complex_name is None and index != len(parts) - 1:
            raise where.error(key, f"{text!r}: {name} is a primitive and has no elements")
        model = fhir_model(complex_name) if complex_name else None
        type_name = complex_name or _primitive_name(info.annotation)
        annotation = info.annotation
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        values = extra.get("enum_values")
        enum = (
            frozenset(str(v) for v in values)
            if isinstance(values, list) and values and "+" not in values
            else None
        )
    return _Target(tuple(steps), model, type_name, is_list, annotation, enum)


def requirements(model: type[BaseModel]) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """The required elements of a FHIR model and its choice groups ``value[x]`` (aliases)."""
    required: list[str] = []
    choices: dict[str, list[str]] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        alias = info.alias or name
        if extra.get("element_required"):
            required.append(alias)
        prefix = extra.get("one_of_many")
        if isinstance(prefix, str):
            choices.setdefault(prefix, []).append(alias)
    return tuple(required), tuple(tuple(group) for group in choices.values())


def _put(target: dict[str, Any], steps: tuple[Step, ...], values: list[Any]) -> None:
    node = target
    for name, _ in steps[:-1]:
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    name, append = steps[-1]
    if append:
        existing = node.get(name)
        if isinstance(existing, list):
            existing.extend(values)
        else:
            node[name] = list(values)
    else:
        node[name] = values[0]


# --- rules ---------------------------------------------------------------------------------------


class _Run:
    """One message's mapping run: the Env, scopes, and the resource instances by role.

    ``trace`` is None except in a dry run, where each rule that writes appends TraceSteps
    naming ``resource``, the instance being built.
    """

    __slots__ = ("env", "instances", "resource", "trace")

    def __init__(self, env: Env, trace: list[TraceStep] | None = None) -> None:
        self.env = env
        self.instances: dict[str, list[Instance]] = {}
        self.trace = trace
        self.resource = ""

    def nearest(self, role: str, scope: Scope) -> Instance | None:
        found = self.instances.get(role) or []
        if scope.pins:
            # Inside a field loop, prefer the instance made for the same repetition.
            for instance in found:
                pins = instance.scope.pins
                if pins and all(scope.pins.get(k) == v for k, v in pins.items()):
                    return instance
        for instance in found:
            if scope.within(instance.scope):
                return instance
        for instance in found:
            if instance.scope.within(scope):
                return instance
        return found[0] if found else None

    def inside(self, role: str, scope: Scope) -> list[Instance]:
        return [i for i in self.instances.get(role) or [] if i.scope.within(scope)]


@dataclass
class _Rule:
    steps: tuple[Step, ...]
    apply: Callable[[Scope, _Run], list[Any]]
    when: _Condition | None
    file: str = ""
    label: str = ""
    source: str | None = None
    line: int | None = None
    target: str = ""
    """The target path from the resource (``participant[].individual``), for the trace."""
    traced: bool = True
    """False for rules: elements, whose sub-rules trace each value."""

    def run(self, node: dict[str, Any], scope: Scope, run: _Run) -> None:
        try:
            if self.when is not None and not self.when.holds(scope):
                return
            values = self.apply(scope, run)
        except (
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            AttributeError,
            ArithmeticError,
        ) as exc:
            where = self.source or "its value"
            msg = f"rule {self.label} of {self.file} failed on {where} ({type(exc).__name__})"
            raise MappingError(
                msg, mapping=self.file, rule=self.label, source_path=self.source
            ) from exc
        if values:
            _put(node, self.steps, values)
            if run.trace is not None and self.traced:
                origin = self.source or "value"
                for value in values:
                    target = f"{run.resource}.{self.target}"
                    run.trace.append(TraceStep(self.file, self.line, origin, target, value))


def _clone(value: Any) -> Any:
    # Constants are shared by every message; each resource gets its own copy (faster than
    # copy.deepcopy for JSON-shaped data).
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _compile_rule(
    spec: RuleSpec,
    model: type[BaseModel] | None,
    mapping: InboundSpec,
    roles: set[str],
    where: _Where,
    key: Key,
    prefix: str = "",
) -> _Rule:
    target = _target(spec.target, model, where, (*key, "target"))
    full_target = prefix + spec.target
    rule_line = where.lines.get(key)
    steps = target.steps
    append = steps[-1][1]
    label = f"{_dotted(key)} ({spec.target})"
    if isinstance(spec.from_, str):
        source_text: str | None = spec.from_
    else:
        source_text = ", ".join(spec.from_) if spec.from_ else None
    when = _condition(spec.when, where, (*key, "when"))
    default = spec.default
    if default is not None:
        target.check_constant(default, where, (*key, "default"))

    def rule(apply: Callable[[Scope, _Run], list[Any]], origin: str | None = None) -> _Rule:
        return _Rule(
            steps,
            apply,
            when,
            where.file,
            label,
            origin or source_text,
            rule_line,
            full_target,
            spec.rules is None,
        )

    if spec.value is not None:
        constant = spec.value
        target.check_constant(constant, where, (*key, "value"))

        def apply_value(scope: Scope, run: _Run) -> list[Any]:
            return [_clone(constant)]

        return rule(apply_value)

    if spec.reference is not None:
        role = spec.reference
        if role not in roles:
            reason = f"no resource has role {role!r}; roles are {sorted(roles)}"
            raise where.error((*key, "reference"), reason)
        if not target.accepts("Reference"):
            reason = f"a reference needs a Reference element; this one is {target.type_name}"
            raise where.error((*key, "target"), reason)

        def apply_reference(scope: Scope, run: _Run) -> list[Any]:
            if append:
                return [{"reference": f"urn:uuid:{i.id}"} for i in run.inside(role, scope)]
            found = run.nearest(role, scope)
            return [{"reference": f"urn:uuid:{found.id}"}] if found else []

        return rule(apply_reference, f"reference:{role}")

    loop = _source(spec.each, where, (*key, "each")) if spec.each is not None else None
    if loop is not None and (spec.rules is None or not append or not loop.repeats):
        reason = "each: loops a repeating field (PV1-7(*)) into rules: building a list element[]"
        raise where.error((*key, "each"), reason)

    if spec.rules is not None:
        if target.model is None:
            reason = f"rules: build a complex element; {spec.target} is a {target.type_name}"
            raise where.error((*key, "target"), reason)
        subs: list[_Rule] = []
        for i, sub_spec in enumerate(spec.rules):
            sub_key = (*key, "rules", i)
            compile_sub = partial(
                _compile_rule, sub_spec, target.model, mapping, roles, where, sub_key
            )
            sub = where.attempt(partial(compile_sub, f"{full_target}."))
            if sub is not None:
                subs.append(sub)
        required, _ = requirements(target.model)

        def build(scope: Scope, run: _Run) -> dict[str, Any]:
            element: dict[str, Any] = {}
            for sub in subs:
                sub.run(element, scope, run)
            if element and required:
                missing = [name for name in required if name not in element]
                if missing:
                    msg = f"{spec.target} lacks its required element {missing[0]}"
                    raise MappingError(msg, mapping=where.file, rule=label, source_path=None)
            return element

        def apply_rules(scope: Scope, run: _Run) -> list[Any]:
            scopes = loop.loop(scope) if loop is not None else [scope]
            return [element for element in (build(s, run) for s in scopes) if element]

        return rule(apply_rules)

    texts = [spec.from_] if isinstance(spec.from_, str) else list(spec.from_ or [])
    if not texts:
        raise where.error((*key, "from"), "list at least one source path")
    sources = [
        _source(t, where, (*key, "from") if len(texts) == 1 else (*key, "from", i))
        for i, t in enumerate(texts)
    ]
    repeats = sources[0].repeats
    if repeats and not append:
        raise where.error(
            (*key, "target"),
            f"the source {texts[0]!r} can give several values; "
            "end the target with [] or pick one repetition such as (1)",
        )
    transform: Transform = INBOUND["string"]
    args: Any = None
    if spec.function is not None:
        found_transform = INBOUND.get(spec.function)
        if found_transform is None:
            raise where.error(
                (*key, "function"),
                f"unknown function {spec.function!r}; expected one of {', '.join(sorted(INBOUND))}",
            )
        transform = found_transform
        if len(sources) > transform.sources:
            raise where.error(
                (*key, "from"), f"{spec.function} reads at most {transform.sources} source path(s)"
            )
        if transform.args is not None:
            try:
                args = transform.args.model_validate(spec.args or {})
            except ValidationError as exc:
                err = exc.errors()[0]
                raise where.error((*key, "args", *tuple(err["loc"])), err["msg"]) from None
        elif spec.args:
            raise where.error((*key, "args"), f"{spec.function} takes no args")
    elif len(sources) > 1:
        raise where.error((*key, "from"), "several source paths need a function that reads them")
    value_map: _ValueMap | None = None
    if spec.map is not None:
        map_spec = mapping.maps.get(spec.map)
        if map_spec is None:
            raise where.error((*key, "map"), f"no value map {spec.map!r} under maps:")
        for code, mapped in map_spec.values.items():
            target.check_constant(mapped, where, ("maps", spec.map, "values", code))
        if map_spec.default is not None:
            target.check_constant(map_spec.default, where, ("maps", spec.map, "default"))
        value_map = _ValueMap(spec.map, map_spec)
    elif not target.accepts(transform.returns):
        name = spec.function or "a plain copy (no function)"
        reason = (
            f"{name} gives a FHIR {transform.returns} but {spec.target} is a {target.type_name}"
        )
        raise where.error((*key, "function" if spec.function else "target"), reason)
    fn = transform.fn
    first = sources[0]

    if len(sources) > 1:
        rest = sources[1:]

        def apply_many(scope: Scope, run: _Run) -> list[Any]:
            head = first.first(scope)
            if head is None:
                return [_clone(default)] if default is not None else []
            result = fn([head, *(s.first(scope) for s in rest)], run.env, args)
            if result is None:
                return [_clone(default)] if default is not None else []
            return [result]

        return rule(apply_many)

    if value_map is not None:
        vmap = value_map

        def apply_map(scope: Scope, run: _Run) -> list[Any]:
            values = first.read(scope) if repeats else [first.first(scope)]
            out = []
            for value in values:
                if value is not None:
                    mapped = vmap.apply(value, run.env)
                    if mapped is not None:
                        out.append(mapped)
            if not out and default is not None:
                return [_clone(default)]
            return out

        return rule(apply_map)

    def apply_function(scope: Scope, run: _Run) -> list[Any]:
        values = first.read(scope) if repeats else [first.first(scope)]
        out = []
        for value in values:
            if value is not None:
                result = fn((value,), run.env, args)
                if result is not None:
                    out.append(result)
        if not out and default is not None:
            return [_clone(default)]
        return out

    return rule(apply_function)


# --- resources and the compiled mapping ----------------------------------------------------------


@dataclass
class Instance:
    """One resource being built: its role, scope, id and JSON."""

    role: str
    scope: Scope
    id: str
    resource: dict[str, Any]
    focus: bool


@dataclass
class _Resource:
    spec: ResourceSpec
    when: _Condition | None
    rules: list[_Rule]
    required: tuple[str, ...] = ()
    choices: tuple[tuple[str, ...], ...] = ()
    loop: _Source | None = None

    def check(self, resource: dict[str, Any], where: str) -> None:
        """Enforce what load-time checks cannot: required elements and one value per choice.

        Every rule's output type was checked against its element at load and every transform
        returns valid FHIR or nothing, so cardinality is all that depends on the message.
        """
        for name in self.required:
            if name not in resource:
                msg = f"{where}.{name} is required by FHIR R4 but no rule of the mapping filled it"
                raise CanonicalError(msg, location=f"{where}.{name}")
        for group in self.choices:
            present = [name for name in group if name in resource]
            if len(present) > 1:
                msg = f"{where} has {' and '.join(present)}; FHIR R4 allows one of a choice"
                raise CanonicalError(msg, location=f"{where}.{present[1]}")


@dataclass
class CompiledMapping:
    """An inbound mapping ready to run: call ``run(message, source, timezone)``."""

    spec: InboundSpec
    file: str
    sha256: str
    resources: list[_Resource]
    group_order: list[str]
    events: frozenset[str] = field(default_factory=frozenset)
    versions: frozenset[str] = field(default_factory=frozenset)
    reads: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    """(segment, field) of every field a rule or the engine reads."""

    def _groups(self, root: Scope) -> dict[str | None, list[Scope]]:
        found: dict[str | None, list[Scope]] = {None: [root]}
        for name in self.group_order:
            group = self.spec.groups[name]
            members = set(group.members) if group.members is not None else None
            local = (
                frozenset({group.starts, *(members or ())}) if members is not None else frozenset()
            )
            instances: list[Scope] = []
            for parent in found[group.within]:
                chunks: list[list[Segment]] = []
                current: list[Segment] | None = None
                for segment in parent.segments:
                    if segment.name == group.starts:
                        current = [segment]
                        chunks.append(current)
                    elif current is not None:
                        if members is None or segment.name in members:
                            current.append(segment)
                        else:
                            current = None
                instances.extend(Scope(name, chunk, parent, local) for chunk in chunks)
            found[name] = instances
        return found

    def run(
        self,
        message: Message,
        source: str,
        timezone: str,
        trace: list[TraceStep] | None = None,
    ) -> tuple[list[Instance], Env]:
        """Map ``message``: the resource instances in Bundle order, and the Env with findings.

        ``trace``, when given, receives one TraceStep per element written.
        """
        env = Env(message, timezone, source)
        run = _Run(env, trace)
        root = Scope(None, message.segments, None)
        groups = self._groups(root)
        control_id = message.control_id
        ordered: list[Instance] = []
        for resource in self.resources:
            spec = resource.spec
            made = run.instances.setdefault(spec.role, [])
            if resource.loop is not None:
                scopes = [s for parent in groups[None] for s in resource.loop.loop(parent)]
            else:
                scopes = groups[spec.each]
            for scope in scopes:
                if resource.when is not None and not resource.when.holds(scope):
                    continue
                role = spec.role if not made else f"{spec.role}-{len(made) + 1}"
                rid = resource_id(source, control_id, role)
                instance = Instance(
                    spec.role, scope, rid, {"resourceType": spec.type, "id": rid}, spec.focus
                )
                made.append(instance)
                ordered.append(instance)
        by_role = {r.spec.role: r for r in self.resources}
        for index, instance in enumerate(ordered, 1):
            resource = by_role[instance.role]
            if trace is not None:
                run.resource = _trace_name(instance, run.instances[instance.role])
            for rule in resource.rules:
                rule.run(instance.resource, instance.scope, run)
            resource.check(instance.resource, f"Bundle.entry[{index}].resource")
        return ordered, env


def _trace_name(instance: Instance, same_role: list[Instance]) -> str:
    """``Patient``, or ``Observation(2)`` when the role has several instances (1-based, as OBX(2))."""
    kind = instance.resource["resourceType"]
    if len(same_role) == 1:
        return str(kind)
    return f"{kind}({same_role.index(instance) + 1})"


def _group_order(spec: InboundSpec, where: _Where) -> list[str]:
    order: list[str] = []
    pending = dict(spec.groups)
    while pending:
        progressed = False
        for name, group in list(pending.items()):
            if group.within is not None and group.within not in spec.groups:
                raise where.error(
                    ("groups", name, "within"), f"no group {group.within!r} is declared"
                )
            if group.within is None or group.within in order:
                order.append(name)
                del pending[name]
                progressed = True
        if not progressed:
            raise where.error(("groups",), "groups nest in a cycle through within:")
    return order


def compile_inbound(
    spec: InboundSpec,
    file: str,
    lines: LineMap,
    sha256: str,
    problems: list[SpecProblem] | None = None,
) -> CompiledMapping:
    """Check and compile an inbound mapping.

    Args:
        spec: the validated file.
        file: its path, named in errors.
        lines: its line map.
        sha256: its content hash.
        problems: when given, every problem is appended to it instead of raised (lint); the
            mapping returned then leaves out the parts that failed.

    Raises:
        MappingSpecError: naming the file, line and key of the first problem.
    """
    where = _Where(file, lines, tuple(spec.source.versions), problems)
    order = where.attempt(partial(_group_order, spec, where)) or []
    for name, group in spec.groups.items():
        for index, segment in enumerate([group.starts, *(group.members or ())]):
            key: Key = ("groups", name, "starts") if index == 0 else ("groups", name, "members")
            where.attempt(partial(_check_segment, segment, where, key))
    roles = [r.role for r in spec.resources]
    for index, role in enumerate(roles):
        if roles.index(role) != index:
            where.attempt(
                partial(
                    _raise,
                    where.error(("resources", index, "role"), f"role {role!r} is used twice"),
                )
            )
    compiled = []
    for index, resource in enumerate(spec.resources):
        made = where.attempt(partial(_compile_resource, resource, spec, set(roles), where, index))
        if made is not None:
            compiled.append(made)
    return CompiledMapping(
        spec,
        file,
        sha256,
        compiled,
        order,
        frozenset(spec.source.events),
        frozenset(spec.source.versions),
        frozenset(where.reads | ENGINE_READS),
    )


def _raise(error: SpecProblem) -> None:
    raise error


def _check_segment(segment: str, where: _Where, key: Key) -> None:
    """A segment named by a group must exist in one of the declared versions (Z-segments may)."""
    if segment.startswith("Z") or not where.versions:
        return
    if all(_field_count(segment, v) is None for v in where.versions):
        versions = ", ".join(where.versions)
        reason = f"{segment} is not a segment of HL7 v{versions}; expected a segment of those versions or a Z-segment"
        raise where.error(key, reason)


def _compile_resource(
    resource: ResourceSpec, spec: InboundSpec, roles: set[str], where: _Where, index: int
) -> _Resource:
    key: Key = ("resources", index)
    model = fhir_model(resource.type)
    if model is None or model.__name__ != resource.type or not issubclass(model, _resource_base()):
        reason = f"{resource.type!r} is not a FHIR R4 resource type; expected {_close_type(resource.type)}"
        raise where.error((*key, "type"), reason)
    if resource.type == "MessageHeader":
        raise where.error((*key, "type"), "the MessageHeader is built by the engine from MSH")
    loop: _Source | None = None
    if resource.each is not None and resource.each not in spec.groups:
        if "-" not in resource.each:
            raise where.error((*key, "each"), f"no group {resource.each!r} under groups:")
        loop = _source(resource.each, where, (*key, "each"))
        if not loop.repeats or loop.all_segments:
            reason = "a field loop reads every repetition of one field, such as PV1-7(*)"
            raise where.error((*key, "each"), reason)
    when = where.attempt(partial(_condition, resource.when, where, (*key, "when")))
    rules: list[_Rule] = []
    for i, rule_spec in enumerate(resource.rules):
        rule_key = (*key, "rules", i)
        if where.problems is not None:
            _check_sources(rule_spec, where, rule_key)
        rule = where.attempt(partial(_compile_rule, rule_spec, model, spec, roles, where, rule_key))
        if rule is not None:
            rules.append(rule)
    required, choices = requirements(model)
    return _Resource(
        resource,
        when,
        rules,
        tuple(r for r in required if r not in ("resourceType", "id")),
        choices,
        loop,
    )


def _close_type(name: str) -> str:
    """The R4B resource types spelt like ``name`` (for a misspelt ``type:``)."""
    import pkgutil

    import fhir.resources.R4B as r4b

    modules = [m.name for m in pkgutil.iter_modules(r4b.__path__)]
    names = []
    for module in difflib.get_close_matches(name.lower(), modules, n=3):
        model = _fhir_model_by_module(module)
        if model is not None and issubclass(model, _resource_base()):
            names.append(model.__name__)
    return " or ".join(names) if names else "a resource type such as Patient or Observation"


def _fhir_model_by_module(module: str) -> type[BaseModel] | None:
    """The model class a fhir.resources R4B module defines under its own name, if any."""
    import importlib

    loaded = importlib.import_module(f"fhir.resources.R4B.{module}")
    for value in vars(loaded).values():
        if isinstance(value, type) and value.__name__.lower() == module:
            found: type[BaseModel] = value
            return found
    return None


def _check_sources(spec: RuleSpec, where: _Where, key: Key) -> None:
    """Lint only: check every source path of a rule on its own, so one bad part hides none."""
    texts: list[tuple[str, Key]] = []
    if isinstance(spec.from_, str):
        texts.append((spec.from_, (*key, "from")))
    elif spec.from_:
        texts.extend((t, (*key, "from", i)) for i, t in enumerate(spec.from_))
    if spec.each is not None:
        texts.append((spec.each, (*key, "each")))
    if spec.when is not None and not _SEGMENT.match(spec.when.path):
        texts.append((spec.when.path, (*key, "when", "path")))
    for text, text_key in texts:
        where.attempt(partial(_source, text, where, text_key))
    for i, sub in enumerate(spec.rules or ()):
        _check_sources(sub, where, (*key, "rules", i))


def message_header(
    message: Message, source: str, control_id: str, focus: Sequence[Instance]
) -> dict[str, Any]:
    """Build the MessageHeader from MSH (v2-to-FHIR IG, MSH → MessageHeader).

    eventCoding is MSH-9.2 in HL7 table 0003; source.name is MSH-3.1; source.endpoint names the
    inbound adapter (MessageHeader.source.endpoint is required in R4).
    """
    trigger = message.trigger_event or message.message_type
    if not is_code(trigger):
        msg = "MSH-9.2 (trigger event) is not a valid code for MessageHeader.eventCoding"
        raise CanonicalError(msg, location="MSH-9")
    header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "id": resource_id(source, control_id, "message-header"),
        "eventCoding": {"system": V2_0003, "code": trigger},
        "source": {"endpoint": f"urn:passerelle:adapter:{source}"},
    }
    name = message.msh.value(3)
    if name:
        header["source"]["name"] = name
    if focus:
        header["focus"] = [{"reference": f"urn:uuid:{i.id}"} for i in focus]
    return header
