"""Site mappings: a base mapping (``extends:``) with one hospital's changes, for its adapters.

A site file names its base by id and changes resources by role: ``remove`` drops base rules
(by rule ``id`` or target), ``replace`` swaps base rules for its own (matched the same way),
``rules`` appends rules (a Z-segment's field, say), and a role the base lacks adds a resource.
The base's compiled rules are shared, not copied or recompiled: a site rule reports its own
file and line in the trace and in errors, a base rule the base's.
"""

from __future__ import annotations

import typing
from dataclasses import replace
from functools import partial

from broker.mapping.hl7v2_in.engine import (
    CompiledMapping,
    CompiledResource,
    check_groups,
    compile_resource,
    compile_top_rule,
    mapping_reads,
    resource_model,
    used_tables,
)
from broker.mapping.hl7v2_in.rules import Rule
from broker.mapping.hl7v2_in.scopes import compile_condition, group_order
from broker.mapping.spec import (
    GroupSpec,
    ResourcePatchSpec,
    ResourceSpec,
    SharedTable,
    SiteSpec,
    ValueMapSpec,
)
from broker.mapping.where import Key, SpecProblem, Where
from broker.yamlspec import LineMap

__all__ = ["compile_site", "site_order"]


def compile_site(
    spec: SiteSpec,
    file: str,
    lines: LineMap,
    sha256: str,
    base: CompiledMapping,
    problems: list[SpecProblem] | None = None,
) -> CompiledMapping:
    """Check and compile a site mapping on top of its compiled base.

    Args:
        spec: the validated site file.
        file: its path, named in errors.
        lines: its line map.
        sha256: its content hash.
        base: the compiled mapping ``spec.extends`` names.
        problems: as for ``compile_inbound``: collect problems instead of raising (lint).

    Raises:
        MappingSpecError: naming the file, line and key of the first problem.
    """
    events = spec.source.events or sorted(base.events)
    versions = spec.source.versions or sorted(base.versions)
    where = Where(file, lines, tuple(versions), problems)
    for index, event in enumerate(spec.source.events or ()):
        if event not in base.events:
            reason = f"{event} is not mapped by {base.id}; expected one of {sorted(base.events)}"
            where.attempt(partial(_raise, where.error(("source", "events", index), reason)))
    for index, version in enumerate(spec.source.versions or ()):
        if version not in base.versions:
            reason = (
                f"v{version} is not mapped by {base.id}; expected one of {sorted(base.versions)}"
            )
            where.attempt(partial(_raise, where.error(("source", "versions", index), reason)))
    groups = {**base.groups, **spec.groups}
    maps = {**base.maps, **spec.maps}
    for name in spec.maps:
        shared = base.maps.get(name)
        if isinstance(shared, SharedTable):
            reason = (
                f"value map {name!r} is also the shared table in {shared.file}:"
                f"{shared.lines.get(('id',), 1)}; expected a name no table uses"
            )
            where.attempt(partial(_raise, where.error(("maps", name), reason)))
    order = where.attempt(partial(group_order, groups, where)) or base.group_order
    check_groups(spec.groups, where)
    by_role = {r.spec.role: r for r in base.resources}
    roles = set(by_role) | {p.role for p in spec.resources}
    resources = list(base.resources)
    seen: set[str] = set()
    for index, patch in enumerate(spec.resources):
        key: Key = ("resources", index)
        if patch.role in seen:
            reason = f"role {patch.role!r} is changed twice; expected one entry per role"
            where.attempt(partial(_raise, where.error((*key, "role"), reason)))
            continue
        seen.add(patch.role)
        found = by_role.get(patch.role)
        if found is None:
            made = where.attempt(partial(_new_resource, patch, groups, maps, roles, where, key))
            if made is not None:
                resources.append(made)
            continue
        changed = where.attempt(partial(_patch, found, patch, base, maps, roles, where, key))
        if changed is not None:
            resources[resources.index(found)] = changed
    return CompiledMapping(
        spec.id,
        file,
        sha256,
        resources,
        groups,
        order,
        frozenset(events),
        frozenset(versions),
        mapping_reads(resources),
        maps,
        frozenset(spec.source.adapters),
        base,
        base.tables | used_tables(spec.resources, maps),
    )


def _raise(error: SpecProblem) -> None:
    raise error


def _new_resource(
    patch: ResourcePatchSpec,
    groups: dict[str, GroupSpec],
    maps: dict[str, ValueMapSpec],
    roles: set[str],
    where: Where,
    key: Key,
) -> CompiledResource:
    if patch.type is None or not patch.rules or patch.remove or patch.replace:
        reason = (
            f"the base has no role {patch.role!r}; a new resource needs type: and rules: "
            "(and no remove: or replace:)"
        )
        raise where.error((*key, "role"), reason)
    spec = ResourceSpec(
        role=patch.role,
        type=patch.type,
        each=patch.each,
        when=patch.when,
        focus=bool(patch.focus),
        rules=patch.rules,
    )
    return compile_resource(spec, groups, maps, roles, where, key)


def _matches(rule: Rule, name: str) -> bool:
    return rule.id == name or rule.target == name


def _patch(
    found: CompiledResource,
    patch: ResourcePatchSpec,
    base: CompiledMapping,
    maps: dict[str, ValueMapSpec],
    roles: set[str],
    where: Where,
    key: Key,
) -> CompiledResource:
    role = patch.role
    if patch.type is not None and patch.type != found.spec.type:
        reason = f"role {role!r} is a {found.spec.type} in {base.id}; drop type: or match it"
        raise where.error((*key, "type"), reason)
    if patch.each is not None:
        reason = f"each: of role {role!r} comes from {base.id}; a site cannot change it"
        raise where.error((*key, "each"), reason)
    model = resource_model(found.spec.type, where, key)
    if found.lets:
        # The site's rules may read the base resource's let: variables.
        where = replace(where, variables=frozenset(let.name for let in found.lets))
    rules = list(found.rules)
    for i, name in enumerate(patch.remove):
        kept = [r for r in rules if not _matches(r, name)]
        if len(kept) == len(rules):
            raise where.error((*key, "remove", i), _no_match(name, role, base, rules))
        rules = kept
    for i, spec in enumerate(patch.replace):
        rule = compile_top_rule(spec, model, maps, roles, where, (*key, "replace", i))
        name = spec.id or spec.target
        if spec.id is not None and not any(r.id == spec.id for r in rules):
            name = spec.target
        hits = [n for n, r in enumerate(rules) if _matches(r, name)]
        if not hits:
            raise where.error((*key, "replace", i), _no_match(name, role, base, rules))
        if rule is None:
            continue
        rules[hits[0]] = rule
        for n in reversed(hits[1:]):
            del rules[n]
    for i, spec in enumerate(patch.rules):
        rule = compile_top_rule(spec, model, maps, roles, where, (*key, "rules", i))
        if rule is not None:
            rules.append(rule)
    when = found.when
    reads = found.reads
    spec_update: dict[str, object] = {}
    if patch.when is not None:
        own = replace(where, reads=set())
        when = own.attempt(partial(compile_condition, patch.when, own, (*key, "when")))
        reads = reads | frozenset(own.reads)
        spec_update["when"] = patch.when
    if patch.focus is not None:
        spec_update["focus"] = patch.focus
    return CompiledResource(
        found.spec.model_copy(update=spec_update) if spec_update else found.spec,
        when,
        rules,
        found.required,
        found.choices,
        found.loop,
        reads,
        found.lets,
        found.requires,
    )


def _no_match(name: str, role: str, base: CompiledMapping, rules: list[Rule]) -> str:
    known = sorted({r.id or r.target for r in rules})
    return f"no rule of role {role!r} in {base.id} has id or target {name!r}; expected one of {', '.join(known)}"


_Item = typing.TypeVar("_Item")


def site_order(specs: list[SiteSpec], items: list[_Item]) -> list[_Item]:
    """``items`` (one per site spec) ordered so that a site comes after the site it extends.

    Raises:
        ValueError: the sites extend each other in a cycle (names the ids).
    """
    by_id = {spec.id: n for n, spec in enumerate(specs)}
    done: list[int] = []
    visiting: list[str] = []

    def visit(n: int) -> None:
        if n in done:
            return
        spec = specs[n]
        if spec.id in visiting:
            cycle = " -> ".join([*visiting[visiting.index(spec.id) :], spec.id])
            msg = f"mappings extend each other in a cycle: {cycle}"
            raise ValueError(msg)
        visiting.append(spec.id)
        parent = by_id.get(spec.extends)
        if parent is not None:
            visit(parent)
        visiting.pop()
        done.append(n)

    for n in range(len(specs)):
        visit(n)
    return [items[n] for n in done]
