"""Rules: one RuleSpec compiled into a closure that reads a scope and writes FHIR elements.

A compiled ``Rule`` holds its target steps and an ``apply(scope, run)`` built for its kind
(constant, reference, sub-element, value map, function), so running it does no lookups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from pydantic import BaseModel, ValidationError

from broker.errors import BrokerError, MappingError
from broker.mapping.context import TraceStep
from broker.mapping.hl7v2_in.scopes import (
    VARIABLE,
    CoalesceSource,
    Guard,
    Reader,
    Scope,
    compile_condition,
    compile_reader,
    compile_source,
)
from broker.mapping.spec import LetSpec, RuleSpec, SharedTable, ValueMapSpec
from broker.mapping.targets import Step, compile_target, put, requirements
from broker.mapping.transforms import INBOUND, Env, SourceValue, Transform
from broker.mapping.where import Key, Where, dotted
from broker.parsing.hl7v2 import escape

__all__ = [
    "Instance",
    "Let",
    "Rule",
    "Run",
    "ValueMap",
    "clone",
    "compile_let",
    "compile_rule",
    "copier",
]


@dataclass
class Instance:
    """One resource being built: its role, scope, id and JSON."""

    role: str
    scope: Scope
    id: str
    resource: dict[str, Any]
    focus: bool


class ValueMap:
    """A value map (``map:``) ready to run: each entry and the default have their copier."""

    __slots__ = ("copies", "default", "name", "spec")

    def __init__(self, name: str, spec: ValueMapSpec) -> None:
        self.name = name
        self.spec = spec
        self.copies = {code: copier(v) for code, v in spec.values.items() if v is not None}
        self.default = copier(spec.default) if spec.default is not None else None

    def apply(self, value: SourceValue, env: Env) -> Any:
        copy = self.copies.get(value.code()) or self.default
        if copy is None:
            table = self.spec.system or f"value map {self.name}"
            env.warn("unknown-code", value, f"the code is not in {table}; the element was left out")
            return None
        return copy()


class Run:
    """One message's mapping run: the Env, scopes, and the resource instances by role.

    ``trace`` is None except in a dry run, where each rule that writes appends TraceSteps
    naming ``resource``, the instance being built.
    """

    __slots__ = ("env", "groups", "instances", "resource", "trace")

    def __init__(self, env: Env, trace: list[TraceStep] | None = None) -> None:
        self.env = env
        self.instances: dict[str, list[Instance]] = {}
        self.trace = trace
        self.resource = ""
        self.groups: dict[str | None, list[Scope]] = {}
        """Every instance of every segment group, by group name (``scopes.group_scopes``)."""

    def group_instances(self, name: str, scope: Scope) -> list[Scope]:
        """The instances of group ``name`` inside ``scope`` (a rule's ``each: GROUP``)."""
        if scope.vars is not None and scope.parent is not None:
            scope = scope.parent
        return [g for g in self.groups.get(name) or () if g.within(scope)]

    def nearest(self, role: str, scope: Scope) -> Instance | None:
        if scope.vars is not None and scope.parent is not None:
            scope = scope.parent  # the let: scope of an instance stands for the instance's scope
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
        if scope.vars is not None and scope.parent is not None:
            scope = scope.parent
        return [i for i in self.instances.get(role) or [] if i.scope.within(scope)]


@dataclass
class Rule:
    """A compiled rule: ``run`` writes what ``apply`` gives to ``steps`` when ``when`` holds."""

    steps: tuple[Step, ...]
    apply: Callable[[Scope, Run], list[Any]]
    when: Guard | None
    file: str = ""
    label: str = ""
    source: str | None = None
    line: int | None = None
    target: str = ""
    """The target path from the resource (``participant[].individual``), for the trace."""
    traced: bool = True
    """False for rules: elements, whose sub-rules trace each value."""
    id: str | None = None
    """The rule's ``id:``, for a site mapping's ``replace:`` and ``remove:``."""
    reads: frozenset[tuple[str, int]] = frozenset()
    """(segment, field) of every source path the rule (with its sub-rules) reads."""

    def run(self, node: dict[str, Any], scope: Scope, run: Run) -> None:
        try:
            if self.when is not None and not self.when.holds(scope):
                return
            values = self.apply(scope, run)
        except BrokerError:
            raise  # a sub-rule's or a function's own error already names its rule
        except Exception as exc:
            # Any bug in a function or the engine costs this message only, and the reason names
            # the mapping file, the rule and the source path (issue 3, bad input).
            where = self.source or "its value"
            msg = f"rule {self.label} of {self.file} failed on {where} ({type(exc).__name__})"
            raise MappingError(
                msg, mapping=self.file, rule=self.label, source_path=self.source
            ) from exc
        if values:
            put(node, self.steps, values)
            if run.trace is not None and self.traced:
                origin = self.source or "value"
                for value in values:
                    target = f"{run.resource}.{self.target}"
                    # A copy: a later rule may add to this element (code.coding[]).
                    step = TraceStep(self.file, self.line, origin, target, clone(value))
                    run.trace.append(step)


_CONTAINERS = (dict, list)


def copier(value: Any) -> Callable[[], Any]:
    """A function that gives a fresh copy of the JSON constant ``value``, built once at load.

    A dict or list holding no container is copied by its own ``copy`` (a Coding: 0.48 us with
    ``clone``, 0.05 us so); a scalar is given as it is.
    """
    if isinstance(value, dict):
        if not any(isinstance(v, _CONTAINERS) for v in value.values()):
            return value.copy
        entries = {k: copier(v) for k, v in value.items()}
        return lambda: {k: copy() for k, copy in entries.items()}
    if isinstance(value, list):
        if not any(isinstance(v, _CONTAINERS) for v in value):
            return value.copy
        items = [copier(v) for v in value]
        return lambda: [copy() for copy in items]
    return lambda: value


def clone(value: Any) -> Any:
    # Constants are shared by every message; each resource gets its own copy (faster than
    # copy.deepcopy for JSON-shaped data).
    # Scalars are taken as they are without a call for each (a Coding is three of them).
    if isinstance(value, dict):
        return {k: clone(v) if isinstance(v, _CONTAINERS) else v for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) if isinstance(v, _CONTAINERS) else v for v in value]
    return value


def compile_rule(
    spec: RuleSpec,
    model: type[BaseModel] | None,
    maps: dict[str, ValueMapSpec],
    roles: set[str],
    where: Where,
    key: Key,
    prefix: str = "",
) -> Rule:
    target = compile_target(spec.target, model, where, (*key, "target"))
    full_target = prefix + spec.target
    rule_line = where.lines.get(key)
    steps = target.steps
    append = steps[-1][1]
    label = f"{dotted(key)} ({spec.target})"
    if isinstance(spec.from_, str):
        source_text: str | None = spec.from_
    elif spec.coalesce:
        source_text = " | ".join(spec.coalesce)
    else:
        source_text = ", ".join(spec.from_) if spec.from_ else None
    when = compile_condition(spec.when, where, (*key, "when"))
    if spec.rules is not None and (spec.from_ is not None or spec.coalesce is not None):
        return _extended(spec, model, maps, roles, where, key, prefix, when)
    default = spec.default
    if default is not None:
        target.check_constant(default, where, (*key, "default"))

    def rule(apply: Callable[[Scope, Run], list[Any]], origin: str | None = None) -> Rule:
        return Rule(
            steps,
            apply,
            when,
            where.file,
            label,
            origin or source_text,
            rule_line,
            full_target,
            spec.rules is None,
            spec.id,
        )

    if spec.value is not None:
        constant = spec.value
        target.check_constant(constant, where, (*key, "value"))

        if not isinstance(constant, dict | list):
            # A string, number or boolean is shared as is: only JSON containers are copied.
            def apply_scalar(scope: Scope, run: Run) -> list[Any]:
                return [constant]

            return rule(apply_scalar)

        copy = copier(constant)

        def apply_value(scope: Scope, run: Run) -> list[Any]:
            return [copy()]

        return rule(apply_value)

    if spec.reference is not None:
        role = spec.reference
        if role not in roles:
            reason = f"no resource has role {role!r}; roles are {sorted(roles)}"
            raise where.error((*key, "reference"), reason)
        if not target.accepts("Reference"):
            reason = f"a reference needs a Reference element; this one is {target.type_name}"
            raise where.error((*key, "target"), reason)

        def apply_reference(scope: Scope, run: Run) -> list[Any]:
            if append:
                return [{"reference": f"urn:uuid:{i.id}"} for i in run.inside(role, scope)]
            found = run.nearest(role, scope)
            return [{"reference": f"urn:uuid:{found.id}"}] if found else []

        return rule(apply_reference, f"reference:{role}")

    group = spec.each if spec.each is not None and "-" not in spec.each else None
    loop = (
        compile_source(spec.each, where, (*key, "each"))
        if spec.each is not None and group is None
        else None
    )
    if spec.each is not None and (
        spec.rules is None or not append or (loop is not None and not loop.repeats)
    ):
        reason = (
            "each: loops a repeating field (PV1-7(*)) or a segment group into rules: "
            "building a list element[]"
        )
        raise where.error((*key, "each"), reason)

    if spec.rules is not None:
        if target.model is None:
            reason = f"rules: build a complex element; {spec.target} is a {target.type_name}"
            raise where.error((*key, "target"), reason)
        subs: list[Rule] = []
        for i, sub_spec in enumerate(spec.rules):
            sub_key = (*key, "rules", i)
            compile_sub = partial(compile_rule, sub_spec, target.model, maps, roles, where, sub_key)
            sub = where.attempt(partial(compile_sub, f"{full_target}."))
            if sub is not None:
                subs.append(sub)
        required, _ = requirements(target.model)

        def build(scope: Scope, run: Run) -> dict[str, Any]:
            element: dict[str, Any] = {}
            for sub in subs:
                sub.run(element, scope, run)
            if element and required:
                missing = [name for name in required if name not in element]
                if missing:
                    msg = f"{spec.target} lacks its required element {missing[0]}"
                    raise MappingError(msg, mapping=where.file, rule=label, source_path=None)
            return element

        def apply_rules(scope: Scope, run: Run) -> list[Any]:
            if group is not None:
                scopes = run.group_instances(group, scope)
            else:
                scopes = loop.loop(scope) if loop is not None else [scope]
            return [element for element in (build(s, run) for s in scopes) if element]

        return rule(apply_rules)

    texts, sources = _readers(spec.from_, spec.coalesce, where, key)
    repeats = sources[0].repeats
    if repeats and not append:
        raise where.error(
            (*key, "target"),
            f"the source {texts[0]!r} can give several values; "
            "end the target with [] or pick one repetition such as (1)",
        )
    transform, args = _transform(spec.function, spec.args, len(sources), where, key)
    value_map: ValueMap | None = None
    if spec.map is not None:
        map_spec = _value_map(spec.map, maps, where, key)
        for code, mapped in map_spec.values.items():
            _check_entry(target.check_constant, spec.map, map_spec, mapped, where, ("values", code))
        if map_spec.default is not None:
            _check_entry(
                target.check_constant, spec.map, map_spec, map_spec.default, where, ("default",)
            )
        value_map = ValueMap(spec.map, map_spec)
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

        optional = transform.optional

        def apply_many(scope: Scope, run: Run) -> list[Any]:
            head = first.first(scope)
            if head is None and not optional:
                return [clone(default)] if default is not None else []
            values = [head]
            for source in rest:  # a loop, not a generator: ~80 such rules per ORU^R01
                values.append(source.first(scope))
            result = fn(values, run.env, args)
            if result is None:
                return [clone(default)] if default is not None else []
            return [result]

        return rule(apply_many)

    if value_map is not None:
        vmap = value_map

        if not repeats:
            # One value: no list to loop over (most map: rules of an ADT^A01, measured).
            def apply_map_one(scope: Scope, run: Run) -> list[Any]:
                value = first.first(scope)
                if value is not None:
                    mapped = vmap.apply(value, run.env)
                    if mapped is not None:
                        return [mapped]
                return [clone(default)] if default is not None else []

            return rule(apply_map_one)

        def apply_map(scope: Scope, run: Run) -> list[Any]:
            out = []
            for value in first.read(scope):
                if value is not None:
                    mapped = vmap.apply(value, run.env)
                    if mapped is not None:
                        out.append(mapped)
            if not out and default is not None:
                return [clone(default)]
            return out

        return rule(apply_map)

    if not repeats:
        # One value, the usual case (PID-7, PID-8, PV1-2...): no list to loop over.
        def apply_function_one(scope: Scope, run: Run) -> list[Any]:
            value = first.first(scope)
            if value is not None:
                result = fn((value,), run.env, args)
                if result is not None:
                    return [result]
            return [clone(default)] if default is not None else []

        return rule(apply_function_one)

    def apply_function(scope: Scope, run: Run) -> list[Any]:
        out = []
        for value in first.read(scope):
            if value is not None:
                result = fn((value,), run.env, args)
                if result is not None:
                    out.append(result)
        if not out and default is not None:
            return [clone(default)]
        return out

    return rule(apply_function)


def _extended(
    spec: RuleSpec,
    model: type[BaseModel] | None,
    maps: dict[str, ValueMapSpec],
    roles: set[str],
    where: Where,
    key: Key,
    prefix: str,
    when: Guard | None,
) -> Rule:
    """A rule whose function builds complex elements and whose ``rules:`` add to each one.

    The sub-rules run on a copy of each element the function gives (none: no element), so a
    constant such as ``status: completed`` is only written next to data that exists.
    """
    base = compile_rule(
        spec.model_copy(update={"rules": None, "when": None}),
        model,
        maps,
        roles,
        where,
        key,
        prefix,
    )
    target = compile_target(spec.target, model, where, (*key, "target"))
    if target.model is None:
        reason = f"rules: add to a complex element; {spec.target} is a {target.type_name}"
        raise where.error((*key, "target"), reason)
    full_target = prefix + spec.target
    subs: list[Rule] = []
    for i, sub_spec in enumerate(spec.rules or ()):
        compile_sub = partial(
            compile_rule, sub_spec, target.model, maps, roles, where, (*key, "rules", i)
        )
        sub = where.attempt(partial(compile_sub, f"{full_target}."))
        if sub is not None:
            subs.append(sub)
    build_base = base.apply

    def apply_extended(scope: Scope, run: Run) -> list[Any]:
        out = []
        for built in build_base(scope, run):
            element = dict(built)
            for sub in subs:
                sub.run(element, scope, run)
            out.append(element)
        return out

    return replace(base, apply=apply_extended, when=when)


def _readers(
    from_: str | list[str] | None, coalesce: list[str] | None, where: Where, key: Key
) -> tuple[list[str], list[Reader]]:
    """The source texts of ``from:`` (or ``coalesce:``) and what reads them."""
    if coalesce is not None:
        found = tuple(
            compile_reader(t, where, (*key, "coalesce", i)) for i, t in enumerate(coalesce)
        )
        return list(coalesce), [CoalesceSource(found)]
    texts = [from_] if isinstance(from_, str) else list(from_ or [])
    if not texts:
        raise where.error((*key, "from"), "list at least one source path")
    sources: list[Reader] = [
        compile_reader(t, where, (*key, "from") if len(texts) == 1 else (*key, "from", i))
        for i, t in enumerate(texts)
    ]
    return texts, sources


def _transform(
    function: str | None, given: dict[str, Any] | None, count: int, where: Where, key: Key
) -> tuple[Transform, Any]:
    """The named transform (a plain copy without one) and its args, validated at load."""
    if function is None:
        if count > 1:
            raise where.error(
                (*key, "from"), "several source paths need a function that reads them"
            )
        return INBOUND["string"], None
    transform = INBOUND.get(function)
    if transform is None:
        raise where.error(
            (*key, "function"),
            f"unknown function {function!r}; expected one of {', '.join(sorted(INBOUND))}",
        )
    if count > transform.sources:
        raise where.error(
            (*key, "from"), f"{function} reads at most {transform.sources} source path(s)"
        )
    if transform.args is None:
        if given:
            raise where.error((*key, "args"), f"{function} takes no args")
        return transform, None
    try:
        return transform, transform.args.model_validate(given or {})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        message = str(err["msg"]).removeprefix("Value error, ")
        raise where.error((*key, "args", *tuple(err["loc"])), message) from None


def _value_map(name: str, maps: dict[str, ValueMapSpec], where: Where, key: Key) -> ValueMapSpec:
    found = maps.get(name)
    if found is None:
        shared = sorted(n for n, m in maps.items() if isinstance(m, SharedTable))
        tables = f"; shared tables are {', '.join(shared)}" if shared else ""
        raise where.error((*key, "map"), f"no value map {name!r} under maps: or in tables/{tables}")
    return found


def _check_entry(
    check: Callable[[Any, Where, Key], None],
    name: str,
    map_spec: ValueMapSpec,
    value: Any,
    where: Where,
    entry: Key,
) -> None:
    """Check one map entry, naming its line in the table file for a shared table."""
    if isinstance(map_spec, SharedTable):
        check(value, Where(map_spec.file, map_spec.lines, problems=where.problems), entry)
    else:
        check(value, where, ("maps", name, *entry))


@dataclass
class Let:
    """A compiled ``let:`` variable: ``value(scope, run)`` computes it for one instance."""

    name: str
    compute: Callable[[Scope, Run], SourceValue | None]
    file: str
    label: str
    source: str

    def value(self, scope: Scope, run: Run) -> SourceValue | None:
        try:
            return self.compute(scope, run)
        except BrokerError:
            raise
        except Exception as exc:
            msg = f"variable {self.label} of {self.file} failed on {self.source} ({type(exc).__name__})"
            raise MappingError(
                msg, mapping=self.file, rule=self.label, source_path=self.source
            ) from exc


def derived(text: str, origin: SourceValue) -> SourceValue:
    """A computed string read like a source value; findings about it name where it came from."""
    return SourceValue(escape(text, origin.delims), origin.segment, origin.path, origin.rep)


def compile_let(
    name: str, spec: LetSpec, maps: dict[str, ValueMapSpec], where: Where, key: Key
) -> Let:
    """Compile one variable of a resource's ``let:`` (``key`` is ``(..., "let", name)``)."""
    if not VARIABLE.match(name):
        reason = (
            f"variable name {name!r}; expected lower-case letters, digits and _ (mrn, full_name)"
        )
        raise where.error(key, reason)
    texts, readers = _readers(spec.from_, spec.coalesce, where, key)
    for text, reader in zip(texts, readers, strict=False):
        if reader.repeats:
            reason = f"{text!r} can give several values; a variable holds one, pick one such as (1)"
            raise where.error((*key, "coalesce" if spec.coalesce else "from"), reason)
    transform, args = _transform(spec.function, spec.args, len(readers), where, key)
    if spec.function is not None and transform.returns != "string":
        reason = f"{spec.function} gives a FHIR {transform.returns}; a variable holds a string"
        raise where.error((*key, "function"), reason)
    vmap: ValueMap | None = None
    if spec.map is not None:
        map_spec = _value_map(spec.map, maps, where, key)
        for code, mapped in map_spec.values.items():
            _check_entry(_string_entry, spec.map, map_spec, mapped, where, ("values", code))
        if map_spec.default is not None:
            _check_entry(_string_entry, spec.map, map_spec, map_spec.default, where, ("default",))
        vmap = ValueMap(spec.map, map_spec)
    fn = transform.fn if spec.function is not None else None
    optional = transform.optional

    def compute(scope: Scope, run: Run) -> SourceValue | None:
        values = [reader.first(scope) for reader in readers]
        origin = next((v for v in values if v is not None), None)
        if origin is None:
            return None
        if fn is not None:
            if values[0] is None and not optional:
                return None
            text = fn(values, run.env, args)
            return derived(text, origin) if text else None
        if vmap is not None:
            mapped = vmap.apply(origin, run.env)
            return derived(mapped, origin) if mapped else None
        return origin

    return Let(name, compute, where.file, f"{dotted(key)}", " | ".join(texts))


def _string_entry(value: Any, where: Where, key: Key) -> None:
    if not isinstance(value, str) or not value:
        raise where.error(key, "a variable's map gives strings; expected a string for this code")
