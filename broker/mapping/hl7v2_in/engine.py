"""The inbound mapping engine: an InboundSpec compiled once into objects that map a Message.

Compilation resolves everything that does not depend on a message: source paths are parsed
(``scopes``), target paths are checked against the fhir.resources R4B models (``targets``),
functions and value maps are looked up and their args validated (``rules``). Running a compiled
mapping on a message only reads segments and builds plain dicts; nothing is parsed from YAML
again. A ``reference:`` names a resource role: the nearest instance in scope or above, or, for a
list target (``result[]``), every instance inside the current scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any

from pydantic import BaseModel

from broker.errors import CanonicalError
from broker.identity import IdentifierSystem
from broker.mapping.bundle import V2_0003, resource_id
from broker.mapping.context import TraceStep
from broker.mapping.hl7v2_in.drops import Drops, Requirement
from broker.mapping.hl7v2_in.rules import Instance, Let, Rule, Run, compile_let, compile_rule
from broker.mapping.hl7v2_in.scopes import (
    SEGMENT,
    Guard,
    Scope,
    Source,
    check_segment,
    compile_condition,
    compile_reader,
    compile_source,
    group_order,
    group_scopes,
)
from broker.mapping.spec import (
    Condition,
    GroupSpec,
    InboundSpec,
    ResourcePatchSpec,
    ResourceSpec,
    RuleSpec,
    SharedTable,
    ValueMapSpec,
)
from broker.mapping.targets import close_type, fhir_model, requirements, resource_base
from broker.mapping.transforms import Env
from broker.mapping.transforms.codes import is_code
from broker.mapping.where import Key, SpecProblem, Where
from broker.parsing.hl7v2 import Message
from broker.yamlspec import LineMap

__all__ = [
    "CompiledMapping",
    "CompiledResource",
    "Instance",
    "Scope",
    "SpecProblem",
    "compile_inbound",
    "fhir_model",
    "message_header",
]

ENGINE_READS = frozenset({("MSH", n) for n in (1, 2, 3, 4, 9, 10, 12, 18)})
"""MSH fields the engine itself reads: delimiters, MSH-3/4 sender, MSH-9 type, MSH-10 control
id, MSH-12 version, MSH-18 charset (v2.5.1 §2.14.9)."""


@dataclass
class CompiledResource:
    """One resource of a mapping: its spec, condition, compiled rules and FHIR cardinality."""

    spec: ResourceSpec
    when: Guard | None
    rules: list[Rule]
    required: tuple[str, ...] = ()
    choices: tuple[tuple[str, ...], ...] = ()
    loop: Source | None = None
    reads: frozenset[tuple[str, int]] = frozenset()
    """(segment, field) read by the resource's ``each:``, ``when:`` and ``let:`` (not its rules)."""
    lets: tuple[Let, ...] = ()
    """Its ``let:`` variables, computed in order per instance before the rules run."""

    requires: tuple[Requirement, ...] = ()
    """Its ``require:`` checks, run on each instance's segments before its rules."""

    def check(self, resource: dict[str, Any], where: str, file: str = "the mapping") -> None:
        """Enforce what load-time checks cannot: required elements and one value per choice.

        Every rule's output type was checked against its element at load and every transform
        returns valid FHIR or nothing, so cardinality is all that depends on the message.
        ``required`` holds primitive and complex 1..x elements alike (``targets.requirements``).

        Raises:
            CanonicalError: naming the element (``Bundle.entry[3].resource.code``).
        """
        found = self.problem(resource, where, file)
        if found is not None:
            raise CanonicalError(found[2], location=found[1])

    def problem(
        self, resource: dict[str, Any], where: str, file: str = "the mapping"
    ) -> tuple[str, str, str] | None:
        """What ``check`` would refuse, or None: the element by type (``Observation.code``),
        its location in the Bundle (``where`` and the element) and why."""
        for name in self.required:
            if name not in resource:
                kind = resource.get("resourceType", "the resource")
                sources = sorted(
                    {r.source for r in self.rules if r.source and _element(r.target) == name}
                )
                read = f" (read from {', '.join(sources)})" if sources else ""
                at = f" ({where})" if where else ""
                msg = (
                    f"{kind}.{name}{at} is required by FHIR R4 but no rule of {file} "
                    f"filled it from this message{read}"
                )
                return f"{kind}.{name}", f"{where}.{name}", msg
        for group in self.choices:
            present = [name for name in group if name in resource]
            if len(present) > 1:
                msg = f"{where} has {' and '.join(present)}; FHIR R4 allows one of a choice"
                kind = resource.get("resourceType", "the resource")
                return f"{kind}.{present[1]}", f"{where}.{present[1]}", msg
        return None

    def unmet(self, scope: Scope) -> Requirement | None:
        """The first ``require:`` check an instance's scope fails, or None."""
        for requirement in self.requires:
            if not requirement.check.holds(scope):
                return requirement
        return None


def _element(target: str) -> str:
    """The top-level element a rule's target writes: ``code.coding[]`` → ``code``."""
    return target.split(".", 1)[0].removesuffix("[]")


@dataclass
class CompiledMapping:
    """An inbound mapping ready to run: call ``run(message, source, timezone)``.

    A site mapping (``extends:``) is compiled into one of these too: ``base`` is the mapping it
    extends and ``adapters`` the inbound adapters it serves (empty for a general mapping).
    """

    id: str
    file: str
    sha256: str
    resources: list[CompiledResource]
    groups: dict[str, GroupSpec]
    group_order: list[str]
    events: frozenset[str] = field(default_factory=frozenset)
    versions: frozenset[str] = field(default_factory=frozenset)
    reads: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    """(segment, field) of every field a rule or the engine reads."""
    maps: dict[str, ValueMapSpec] = field(default_factory=dict)
    adapters: frozenset[str] = field(default_factory=frozenset)
    base: CompiledMapping | None = None
    tables: frozenset[str] = field(default_factory=frozenset)
    """The shared tables its rules use, recorded with the mapping in each MapResult."""

    def __post_init__(self) -> None:
        self._by_role = {r.spec.role: r for r in self.resources}

    @property
    def lineage(self) -> tuple[CompiledMapping, ...]:
        """This mapping, then the mapping it extends, and so on."""
        chain: list[CompiledMapping] = []
        current: CompiledMapping | None = self
        while current is not None:
            chain.append(current)
            current = current.base
        return tuple(chain)

    def run(
        self,
        message: Message,
        source: str,
        timezone: str,
        trace: list[TraceStep] | None = None,
        identifier_systems: Sequence[IdentifierSystem] = (),
        received_at: datetime | None = None,
    ) -> tuple[list[Instance], Env]:
        """Map ``message``: the resource instances in Bundle order, and the Env with findings.

        ``trace``, when given, receives one TraceStep per element written. ``Env.seen`` holds
        every (segment instance, field) a rule, condition or variable read: ``unmapped`` input.
        """
        env = Env(message, timezone, source, identifier_systems, received_at)
        run = Run(env, trace)
        root = Scope(None, message.segments, None, seen=env.seen)
        groups = group_scopes(self.groups, self.group_order, root)
        run.groups = groups
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
        by_role = self._by_role
        drops: Drops | None = None
        file = f"mapping {self.id}"
        for index, instance in enumerate(ordered, 1):
            resource = by_role[instance.role]
            if drops is not None and drops.holds(instance.scope):
                continue
            if resource.requires:
                unmet = resource.unmet(instance.scope)
                if unmet is not None:
                    drops = drops or Drops(groups, self.id, env.findings, env.seen)
                    drops.drop(instance, (unmet.name, unmet.reason))
                    continue
            if trace is not None:
                run.resource = _trace_name(instance, run.instances[instance.role])
            scope = instance.scope
            if resource.lets:
                # The variables live on a scope of their own, so two resources built on the same
                # group instance never see each other's; references look through it.
                scope = Scope(None, [], scope)
                values: dict[str, Any] = {}
                scope.vars = values
                for let in resource.lets:
                    values[let.name] = let.value(scope, run)
            for rule in resource.rules:
                rule.run(instance.resource, scope, run)
            found = resource.problem(instance.resource, f"Bundle.entry[{index}].resource", file)
            if found is not None:
                if instance.scope.parent is None:
                    raise CanonicalError(found[2], location=found[1])
                drops = drops or Drops(groups, self.id, env.findings, env.seen)
                drops.drop(instance, _recheck(by_role, file, instance) or found[::2])
        if drops is not None:
            ordered = drops.settle(ordered, partial(_recheck, by_role, file))
        return ordered, env


def _recheck(
    by_role: dict[str, CompiledResource], file: str, instance: Instance
) -> tuple[str, str] | None:
    """An instance's problem after references to dropped resources were cut from it."""
    found = by_role[instance.role].problem(instance.resource, "", file)
    return (found[0], found[2]) if found is not None else None


def _trace_name(instance: Instance, same_role: list[Instance]) -> str:
    """``Patient``, or ``Observation(2)`` when the role has several instances (1-based, as OBX(2))."""
    kind = instance.resource["resourceType"]
    if len(same_role) == 1:
        return str(kind)
    return f"{kind}({same_role.index(instance) + 1})"


def compile_inbound(
    spec: InboundSpec,
    file: str,
    lines: LineMap,
    sha256: str,
    problems: list[SpecProblem] | None = None,
    tables: dict[str, SharedTable] | None = None,
) -> CompiledMapping:
    """Check and compile an inbound mapping.

    Args:
        spec: the validated file.
        file: its path, named in errors.
        lines: its line map.
        sha256: its content hash.
        problems: when given, every problem is appended to it instead of raised (lint); the
            mapping returned then leaves out the parts that failed.
        tables: the shared code tables (``mappings/tables/``) by name, usable by ``map:``.

    Raises:
        MappingSpecError: naming the file, line and key of the first problem.
    """
    where = Where(file, lines, tuple(spec.source.versions), problems)
    order = where.attempt(partial(group_order, spec.groups, where)) or []
    check_groups(spec.groups, where)
    maps = with_tables(spec.maps, tables or {}, where)
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
        made = where.attempt(
            partial(
                compile_resource,
                resource,
                spec.groups,
                maps,
                set(roles),
                where,
                ("resources", index),
            )
        )
        if made is not None:
            compiled.append(made)
    return CompiledMapping(
        spec.id,
        file,
        sha256,
        compiled,
        dict(spec.groups),
        order,
        frozenset(spec.source.events),
        frozenset(spec.source.versions),
        mapping_reads(compiled),
        maps,
        tables=used_tables(spec.resources, maps),
    )


def used_tables(
    resources: Sequence[ResourceSpec | Any], maps: dict[str, ValueMapSpec]
) -> frozenset[str]:
    """The names of the shared tables that the rules and variables of ``resources`` map with."""
    names: set[str] = set()

    def visit(rules: Sequence[RuleSpec]) -> None:
        for rule in rules:
            if rule.map is not None:
                names.add(rule.map)
            visit(rule.rules or ())

    for resource in resources:
        visit(resource.rules)
        if isinstance(resource, ResourcePatchSpec):
            visit(resource.replace)
        else:
            names.update(let.map for let in resource.let.values() if let.map)
    return frozenset(n for n in names if isinstance(maps.get(n), SharedTable))


def with_tables(
    local: dict[str, ValueMapSpec], tables: dict[str, SharedTable], where: Where
) -> dict[str, ValueMapSpec]:
    """The shared tables and the file's own maps; a name in both is a problem naming both files."""
    for name in local:
        table = tables.get(name)
        if table is not None:
            line = table.lines.get(("id",), 1)
            reason = (
                f"value map {name!r} is also the shared table in {table.file}:{line}; "
                "expected a name no table uses (or use the table and remove this map)"
            )
            where.attempt(partial(_raise, where.error(("maps", name), reason)))
    return {**tables, **local}


def mapping_reads(resources: Sequence[CompiledResource]) -> frozenset[tuple[str, int]]:
    """(segment, field) of every field the engine, a resource or a rule reads."""
    reads: set[tuple[str, int]] = set(ENGINE_READS)
    for resource in resources:
        reads |= resource.reads
        for rule in resource.rules:
            reads |= rule.reads
    return frozenset(reads)


def check_groups(groups: dict[str, GroupSpec], where: Where) -> None:
    """Every segment a group names exists in the declared versions (Z-segments may)."""
    for name, group in groups.items():
        starts = group.start_names
        for index, segment in enumerate(starts):
            key: Key = ("groups", name, "starts")
            if not isinstance(group.starts, str):
                key = (*key, index)
            where.attempt(partial(check_segment, segment, where, key))
        for index, segment in enumerate(group.members or ()):
            members: Key = ("groups", name, "members", index)
            where.attempt(partial(check_segment, segment, where, members))


def _raise(error: SpecProblem) -> None:
    raise error


def resource_model(type_name: str, where: Where, key: Key) -> type[BaseModel]:
    """The fhir.resources model of a resource type a mapping may build (not MessageHeader)."""
    model = fhir_model(type_name)
    if model is None or model.__name__ != type_name or not issubclass(model, resource_base()):
        reason = f"{type_name!r} is not a FHIR R4 resource type; expected {close_type(type_name)}"
        raise where.error((*key, "type"), reason)
    if type_name == "MessageHeader":
        raise where.error((*key, "type"), "the MessageHeader is built by the engine from MSH")
    return model


def compile_resource(
    resource: ResourceSpec,
    groups: dict[str, GroupSpec],
    maps: dict[str, ValueMapSpec],
    roles: set[str],
    where: Where,
    key: Key,
) -> CompiledResource:
    """Compile one resource and its rules (``key`` is where it is in the file)."""
    model = resource_model(resource.type, where, key)
    own = replace(where, reads=set())
    loop: Source | None = None
    if resource.each is not None and resource.each not in groups:
        if "-" not in resource.each:
            raise where.error((*key, "each"), f"no group {resource.each!r} under groups:")
        loop = compile_source(resource.each, own, (*key, "each"))
        if not loop.repeats or loop.all_segments:
            reason = "a field loop reads every repetition of one field, such as PV1-7(*)"
            raise where.error((*key, "each"), reason)
    when = own.attempt(partial(compile_condition, resource.when, own, (*key, "when")))
    lets: list[Let] = []
    for name, let_spec in resource.let.items():
        defined = replace(own, variables=frozenset(let.name for let in lets))
        let = own.attempt(partial(compile_let, name, let_spec, maps, defined, (*key, "let", name)))
        if let is not None:
            lets.append(let)
    if lets or resource.let:
        where = replace(where, variables=frozenset(resource.let))
    requires: list[Requirement] = []
    for i, require in enumerate(resource.require):
        guard = own.attempt(
            partial(compile_condition, require.check, own, (*key, "require", i, "check"))
        )
        if guard is not None:
            name = f"{resource.role} require[{i + 1}]"
            requires.append(Requirement(guard, require.reason, name))
    rules: list[Rule] = []
    for i, rule_spec in enumerate(resource.rules):
        rule = compile_top_rule(
            rule_spec, model, maps, roles, where, (*key, "rules", i), frozenset(groups)
        )
        if rule is not None:
            rules.append(rule)
    required, choices = requirements(model)
    return CompiledResource(
        resource,
        when,
        rules,
        tuple(r for r in required if r not in ("resourceType", "id")),
        choices,
        loop,
        frozenset(own.reads),
        tuple(lets),
        tuple(requires),
    )


def compile_top_rule(
    spec: RuleSpec,
    model: type[BaseModel],
    maps: dict[str, ValueMapSpec],
    roles: set[str],
    where: Where,
    key: Key,
    groups: frozenset[str] | None = None,
) -> Rule | None:
    """Compile a resource's rule, recording what it reads; None when linting found a problem.

    ``groups``, when given, are the group names a rule's ``each:`` may loop over (checked here).
    """
    own = replace(where, reads=set())
    if groups is not None:
        where.attempt(partial(_check_group_loops, spec, groups, where, key))
    if where.problems is not None:
        _check_sources(spec, own, key)
    rule = own.attempt(partial(compile_rule, spec, model, maps, roles, own, key))
    if rule is not None:
        rule.reads = frozenset(own.reads)
    return rule


def _check_group_loops(spec: RuleSpec, groups: frozenset[str], where: Where, key: Key) -> None:
    """A rule's ``each:`` naming a group (no ``-``) must name a declared one."""
    if spec.each is not None and "-" not in spec.each and spec.each not in groups:
        known = ", ".join(sorted(groups)) or "none"
        reason = f"no group {spec.each!r} under groups: ({known}); or loop a field such as PV1-7(*)"
        raise where.error((*key, "each"), reason)
    for i, sub in enumerate(spec.rules or ()):
        _check_group_loops(sub, groups, where, (*key, "rules", i))


def _check_sources(spec: RuleSpec, where: Where, key: Key) -> None:
    """Lint only: check every source path of a rule on its own, so one bad part hides none."""
    texts: list[tuple[str, Key]] = []
    if isinstance(spec.from_, str):
        texts.append((spec.from_, (*key, "from")))
    elif spec.from_:
        texts.extend((t, (*key, "from", i)) for i, t in enumerate(spec.from_))
    texts.extend((t, (*key, "coalesce", i)) for i, t in enumerate(spec.coalesce or ()))
    if spec.each is not None and "-" in spec.each:
        texts.append((spec.each, (*key, "each")))
    texts.extend(_condition_paths(spec.when, (*key, "when")))
    for text, text_key in texts:
        where.attempt(partial(compile_reader, text, where, text_key))
    for i, sub in enumerate(spec.rules or ()):
        _check_sources(sub, where, (*key, "rules", i))


def _condition_paths(spec: Condition | None, key: Key) -> list[tuple[str, Key]]:
    """The source paths a condition (with its ``all:``/``any:``/``not:`` parts) reads."""
    if spec is None:
        return []
    if spec.path is not None:
        return [] if SEGMENT.match(spec.path) else [(spec.path, (*key, "path"))]
    found: list[tuple[str, Key]] = []
    for name, i, part in spec.parts:
        found.extend(_condition_paths(part, (*key, name) if i is None else (*key, name, i)))
    return found


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
    name = message.sending_application
    if name:
        header["source"]["name"] = name
    if focus:
        header["focus"] = [{"reference": f"urn:uuid:{i.id}"} for i in focus]
    return header
