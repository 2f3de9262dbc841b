"""Source side of a mapping: scopes, segment groups, HL7 v2 source paths and conditions.

Scopes: the whole message is the root scope; each instance of a declared segment group (an ORU^R01
PATIENT_RESULT, ORDER_OBSERVATION or OBSERVATION, v2.5.1 §7.3.1) is a child scope, and each
repetition of a looped field (``each: PV1-7(*)``) is a pinned child scope. A source path reads
the nearest scope holding its segment, so an OBSERVATION's rule reading ``OBR-7`` sees its own
order's OBR. Paths follow ``broker.parsing.hl7v2``'s grammar and are checked at load against
hl7apy's reference tables for the declared versions (Z-segments are site-defined and free).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache, partial

from broker.mapping.spec import Condition, GroupSpec
from broker.mapping.transforms import SourceValue
from broker.mapping.where import Key, Where
from broker.parsing.hl7v2 import Path, Segment, parse_path

__all__ = [
    "SEGMENT",
    "CoalesceSource",
    "FieldRead",
    "Guard",
    "Pin",
    "Reader",
    "Scope",
    "Source",
    "VarSource",
    "check_segment",
    "compile_condition",
    "compile_reader",
    "compile_source",
    "field_count",
    "field_numbers",
    "group_order",
    "group_scopes",
    "group_segments",
]


Pin = tuple[Segment, int]
"""A field loop's segment and the repetition it is on."""
FieldRead = int
"""A ``transforms.field_read`` key: a segment instance and one of its fields that was read."""


class Scope:
    """The message, one instance of a segment group, or one repetition of a looped field.

    ``pins`` maps (segment name, field number) to the segment and repetition a field loop
    (``each: PV1-7(*)``) is on: inside the loop, ``PV1-7`` reads that repetition. ``seen`` is
    the message's (segment instance, field number) reads, shared by every scope of one run: what
    the unmapped-input report compares the message with (``transforms.field_read`` keys; the
    hot paths below compute them inline). ``found`` holds what ``Source.first`` found here.
    """

    __slots__ = (
        "by_name",
        "found",
        "group",
        "local",
        "parent",
        "pins",
        "seen",
        "segments",
        "vars",
    )

    def __init__(
        self,
        group: str | None,
        segments: list[Segment],
        parent: Scope | None,
        local: frozenset[str] = frozenset(),
        pins: dict[tuple[str, int], Pin] | None = None,
        seen: set[FieldRead] | None = None,
    ) -> None:
        self.group = group
        self.seen: set[FieldRead] = (
            parent.seen if parent is not None else (seen if seen is not None else set())
        )
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
        self.vars: dict[str, SourceValue | None] | None = None
        """A resource instance's ``let:`` variables (set on the scope its rules run in)."""
        self.found: dict[str, SourceValue | None] = {}
        """Source text → the value ``Source.first`` found for it in this scope."""

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
class Source:
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
        scope.seen.add(id(segment) * 512 + p.field)  # field_read: the loop read every repetition
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
        seen = scope.seen
        number = p.field
        repetition = p.repetition
        # field_read: one repetition read (PID-3(2)) leaves the others unread.
        read_as = number if repetition is None else 256 + number
        for segment in segments:
            seen.add(id(segment) * 512 + read_as)
            reps = segment.repetitions(number)
            chosen: Iterable[tuple[int, str]]
            if repetition is None:
                chosen = enumerate(reps, 1)
            elif repetition <= len(reps):
                chosen = ((repetition, reps[repetition - 1]),)
            else:
                continue
            for rep_number, rep in chosen:
                raw = rep
                if p.component is not None:
                    comps = rep.split(segment.delims.component)
                    raw = comps[p.component - 1] if p.component <= len(comps) else ""
                    if p.sub is not None:
                        subs = raw.split(segment.delims.subcomponent)
                        raw = subs[p.sub - 1] if p.sub <= len(subs) else ""
                if raw and raw != '""':
                    out.append(SourceValue(raw, segment, p, rep_number))
        return out

    def first(self, scope: Scope) -> SourceValue | None:
        """The first value this path reads in ``scope``, or None.

        Remembered per scope: the conditions of an ORU^R01 OBSERVATION read OBX-2 a dozen
        times (685 reads per message, 330 distinct: map_message -9 %, measured). A scope, the
        message and what a path reads never change during a run, and ``seen`` only grows.
        """
        known = scope.found
        text = self.text
        if text in known:
            return known[text]
        value = known[text] = self._first(scope)
        return value

    def _first(self, scope: Scope) -> SourceValue | None:
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
            scope.seen.add(id(segment) * 512 + 256 + p.field)  # field_read, one repetition
            reps = rep.split(d.repetition)
            if p.repetition > len(reps):
                return None
            rep = reps[p.repetition - 1]
        elif p.repetition > 1:
            return None  # no such repetition: nothing was read
        else:
            scope.seen.add(id(segment) * 512 + p.field)  # field_read
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
def field_count(segment: str, version: str) -> int | None:
    """The highest field number hl7apy's reference tables define for a segment, None if unknown.

    Taken from the element names (``PID_40``), not their count: hl7apy leaves withdrawn fields
    out (v2.8 PID has 39 entries ending with PID_40; v2.7 PV1 has no PV1_52), and a field keeps
    its number when an earlier one is withdrawn (v2.5.1 §2.5.3.2, fields are never renumbered).
    """
    numbers = field_numbers(segment, version)
    return max(numbers, default=0) if numbers is not None else None


@lru_cache(maxsize=512)
def field_numbers(segment: str, version: str) -> dict[int, str] | None:
    """Field number → HL7 data type of each field hl7apy defines for a segment, None if unknown.

    Keyed by the number in the element name (``PID_40`` → 40): withdrawn fields are absent.
    """
    from hl7apy import load_reference
    from hl7apy.exceptions import HL7apyException

    try:
        reference = load_reference(segment, "Segment", version)
    except (HL7apyException, KeyError, ValueError):
        return None
    numbers: dict[int, str] = {}
    for entry in reference[1]:
        _, _, number = str(entry[0]).rpartition("_")
        if number.isdigit():
            leaf = entry[1]
            numbers[int(number)] = str(leaf[2]) if len(leaf) > 2 and leaf[2] else ""
    return numbers


def check_exists(path: Path, text: str, where: Where, key: Key) -> None:
    # Z-segments are site-defined (v2.5.1 §2.8.2): no reference table knows them.
    if path.segment.startswith("Z") or not where.versions:
        return
    counts = [c for c in (field_count(path.segment, v) for v in where.versions) if c is not None]
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


class VarSource:
    """``$name``: a ``let:`` variable of the resource, read like a source path."""

    __slots__ = ("name", "text")
    repeats = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = f"${name}"

    def first(self, scope: Scope) -> SourceValue | None:
        current: Scope | None = scope
        while current is not None:
            found = current.vars
            if found is not None and self.name in found:
                return found[self.name]
            current = current.parent
        return None

    def read(self, scope: Scope) -> list[SourceValue]:
        value = self.first(scope)
        return [value] if value is not None else []


class CoalesceSource:
    """``coalesce: [OBX-14, OBR-7]``: the first of several sources that has a value.

    Every source is read, so the alternatives passed over count as read (mapped, to the same
    element) in the unmapped-input report.
    """

    __slots__ = ("repeats", "sources", "text")

    def __init__(self, sources: tuple[Source | VarSource, ...]) -> None:
        self.sources = sources
        self.text = " | ".join(s.text for s in sources)
        self.repeats = any(s.repeats for s in sources)

    def first(self, scope: Scope) -> SourceValue | None:
        found = [source.first(scope) for source in self.sources]
        return next((value for value in found if value is not None), None)

    def read(self, scope: Scope) -> list[SourceValue]:
        found = [source.read(scope) for source in self.sources]
        return next((values for values in found if values), [])


Reader = Source | VarSource | CoalesceSource
"""What a rule reads values from: a path, a variable, or a coalesce of those."""

VARIABLE = re.compile(r"^[a-z_][a-z0-9_]*$")


def compile_reader(text: str, where: Where, key: Key) -> Source | VarSource:
    """A source path, or ``$name`` for a variable the resource's ``let:`` defines above."""
    if text.startswith("$"):
        name = text[1:]
        if name not in where.variables:
            known = ", ".join(f"${v}" for v in sorted(where.variables)) or "none"
            reason = f"no variable {text!r} is defined above; expected one of let: ({known})"
            raise where.error(key, reason)
        return VarSource(name)
    return compile_source(text, where, key)


def compile_source(text: str, where: Where, key: Key) -> Source:
    try:
        path = parse_path(text)
    except ValueError as exc:
        raise where.error(key, str(exc)) from None
    check_exists(path, text, where, key)
    where.reads.add((path.segment, path.field))
    head = text.strip().split("-", 1)[0]
    return Source(text, path, head.endswith("(*)"))


# --- conditions and value maps -------------------------------------------------------------------


@dataclass(frozen=True)
class Guard:
    source: Source | VarSource | None
    """None for a segment test (``path: PV1``): is the segment in scope?"""
    segment: str
    spec: Condition
    pattern: re.Pattern[str] | None = None
    """``matches:``, compiled at load."""
    parts: tuple[Guard, ...] = ()
    """The compiled sub-conditions of ``all:``, ``any:`` or ``not:`` (``op``)."""
    op: str | None = None
    """``spec.op``, read once at load: guards run several times per OBX."""
    present: bool | None = None
    """``spec.present``, read once at load like ``op``."""
    equals: str | None = None
    """``spec.equals``, read once at load."""
    codes: frozenset[str] = frozenset()
    """``spec.in_`` as a set, read once at load."""

    def holds(self, scope: Scope) -> bool:
        if self.source is None:
            parts = self.parts
            if parts:
                # Plain loops, not all()/any() over a generator: a quarter cheaper on this hot
                # path (every when: and require: of every resource instance), measured.
                op = self.op
                if op == "any":
                    for part in parts:  # noqa: SIM110 (speed, above)
                        if part.holds(scope):
                            return True
                    return False
                if op == "all":
                    for part in parts:  # noqa: SIM110 (speed, above)
                        if not part.holds(scope):
                            return False
                    return True
                return not parts[0].holds(scope)
            return bool(scope.find(self.segment)) == self.present
        value = self.source.first(scope)
        if self.present is not None:
            return (value is not None) == self.present
        code = value.code() if value is not None else ""
        if self.equals is not None:
            return code == self.equals
        if self.pattern is not None:
            return self.pattern.fullmatch(code) is not None
        return code in self.codes


SEGMENT = re.compile(r"^[A-Z][A-Z0-9]{2}$")


def compile_condition(spec: Condition | None, where: Where, key: Key) -> Guard | None:
    if spec is None:
        return None
    if spec.path is None:
        parts = [
            where.attempt(
                partial(
                    compile_condition, part, where, (*key, name) if i is None else (*key, name, i)
                )
            )
            for name, i, part in spec.parts
        ]
        return Guard(None, "", spec, parts=tuple(p for p in parts if p is not None), op=spec.op)
    if SEGMENT.match(spec.path):
        if spec.present is None:
            reason = "a segment name alone can only be tested with present: true|false"
            raise where.error((*key, "path"), reason)
        return Guard(None, spec.path, spec, present=spec.present)
    pattern = None
    if spec.matches is not None:
        try:
            pattern = re.compile(spec.matches)
        except re.error as exc:
            at = f" at position {exc.pos}" if exc.pos is not None else ""
            reason = f"invalid regular expression: {exc.msg}{at}; expected a Python regex"
            raise where.error((*key, "matches"), reason) from None
    return Guard(
        compile_reader(spec.path, where, (*key, "path")),
        "",
        spec,
        pattern,
        present=spec.present,
        equals=spec.equals,
        codes=frozenset(spec.in_ or ()),
    )


def group_order(groups: dict[str, GroupSpec], where: Where) -> list[str]:
    """The group names, each after the group it is ``within`` (a cycle is a problem)."""
    order: list[str] = []
    pending = dict(groups)
    while pending:
        progressed = False
        for name, group in list(pending.items()):
            if group.within is not None and group.within not in groups:
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


def check_segment(segment: str, where: Where, key: Key) -> None:
    """A segment named by a group must exist in one of the declared versions (Z-segments may)."""
    if segment.startswith("Z") or not where.versions:
        return
    if all(field_count(segment, v) is None for v in where.versions):
        versions = ", ".join(where.versions)
        reason = f"{segment} is not a segment of HL7 v{versions}; expected a segment of those versions or a Z-segment"
        raise where.error(key, reason)


def group_scopes(
    groups: dict[str, GroupSpec], order: list[str], root: Scope
) -> dict[str | None, list[Scope]]:
    """Every instance of every group, by group name (``None`` → ``[root]``), in message order.

    ``order`` lists parents before children (``group_order``). The instances are those of
    ``group_segments``, each a scope inside the instance of its ``within`` group holding it.
    """
    found: dict[str | None, list[Scope]] = {None: [root]}
    for name, instances in group_segments(groups, order, root.segments).items():
        if name is None:
            continue
        group = groups[name]
        local = frozenset({*group.start_names, *(group.members or ())})
        parents = found[group.within]
        found[name] = [Scope(name, chunk, parents[index], local) for index, chunk in instances]
    return found


def group_segments(
    groups: dict[str, GroupSpec], order: list[str], segments: list[Segment]
) -> dict[str | None, list[tuple[int, list[Segment]]]]:
    """The segments of every instance of every group, by group name, in message order.

    Each instance is the index of the instance of its ``within`` group that holds it, and its
    segments; ``None`` → ``[(0, segments)]``, the whole message. ``order`` lists parents before
    children (``group_order``). A group's start segments are local to it: an
    ORDER_OBSERVATION sent without ORC never reads another order's ORC from the enclosing
    PATIENT_RESULT. The unmapped report places segments with this, without building scopes.
    """
    found: dict[str | None, list[tuple[int, list[Segment]]]] = {None: [(0, segments)]}
    for name in order:
        group = groups[name]
        rank = {start: i for i, start in enumerate(group.start_names)}
        members = set(group.members) if group.members is not None else None
        instances: list[tuple[int, list[Segment]]] = []
        for index, (_, parent) in enumerate(found[group.within]):
            current: list[Segment] | None = None
            latest = 0
            for segment in parent:
                position = rank.get(segment.name)
                if position is not None:
                    # [ORC] OBR: an OBR continues an instance that has seen only its ORC; an
                    # ORC, or a second OBR, begins the next one (v2.5.1 §2.5.2 segment groups).
                    if current is not None and position > latest:
                        current.append(segment)
                    else:
                        current = [segment]
                        instances.append((index, current))
                    latest = position
                elif current is not None:
                    if members is None or segment.name in members:
                        current.append(segment)
                    else:
                        current = None
        found[name] = instances
    return found
