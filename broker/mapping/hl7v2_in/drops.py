"""Malformed segments: the part of a mapping run that drops a group instance and keeps the rest.

A resource instance is *malformed* when one of its mapping's ``require:`` checks fails on its
segments, or when an element FHIR R4 requires is left empty. Built on the whole message (the
root scope), that is the message's failure and it is quarantined. Built on an instance of a
segment group (an ORU^R01 OBSERVATION: its OBX and NTEs) or on one repetition of a looped field,
the group instance is dropped: every resource built inside it leaves the Bundle, the other
resources lose their references to them, and a ``segment-dropped`` finding names the group
instance by structure (``PATIENT_RESULT(1)/ORDER_OBSERVATION(1)/OBSERVATION(7)/OBX``), the check
or element that failed and why, never a value. Dropping can leave another resource malformed (a
required reference gone), and a focal resource whose list of references (a DiagnosticReport's
``result``) pointed only at dropped resources is malformed too ("an order with none of its
results usable"): the same rule then drops its group. A message whose focal resources were all
dropped has no clinical content left and is quarantined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.envelope import Finding
from broker.errors import CanonicalError
from broker.mapping.hl7v2_in.rules import Instance
from broker.mapping.hl7v2_in.scopes import Guard, Scope

__all__ = ["DROPPED", "Drops", "Requirement", "tally_key"]

DROPPED = "segment-dropped"
"""The finding code of a dropped group instance."""


@dataclass(frozen=True)
class Requirement:
    """One compiled ``require:`` check of a resource: its guard, reason and name."""

    check: Guard
    reason: str
    name: str
    """``observation require[1]``: the resource's role and the check's 1-based index."""


Problem = tuple[str, str]
"""(what failed, why): ``("Observation.code", "Observation.code is required ...")``."""


def tally_key(finding: Finding) -> str:
    """The unmapped-report counter of a dropped group: its location without instance numbers
    and the check that failed (``PATIENT_RESULT/ORDER_OBSERVATION/OBSERVATION/OBX|...``).

    Bounded like the unmapped fields: the same for every message with the same defect.
    """
    parts = [part.partition("(")[0] for part in finding.location.split("/")]
    return f"{'/'.join(parts)}|{finding.rule or finding.code}"


@dataclass
class Drops:
    """The group instances dropped from one mapping run, and their findings."""

    groups: dict[str | None, list[Scope]]
    mapping: str
    findings: list[Finding]
    seen: set[int]
    scopes: list[Scope] = field(default_factory=list)
    count: int = 0
    """How many group instances were dropped (a nested one and its parent count twice)."""

    def holds(self, scope: Scope) -> bool:
        """Tell whether ``scope`` is a dropped group instance or inside one."""
        return any(scope.within(dropped) for dropped in self.scopes)

    def drop(self, instance: Instance, problem: Problem) -> None:
        """Drop the group instance ``instance`` was built on, or quarantine the message.

        Raises:
            CanonicalError: the instance was built on the whole message (no group to drop).
        """
        rule, why = problem
        scope = instance.scope
        if scope.parent is None:
            raise CanonicalError(why, location=rule)
        if self.holds(scope):
            return
        self.scopes[:] = [s for s in self.scopes if not s.within(scope)]
        self.scopes.append(scope)
        self.count += 1
        location = self.location(scope)
        segments = _segment_names(scope)
        message = (
            f"{scope.group or 'the field repetition'} ({segments}) dropped: {why}. What "
            f"mapping {self.mapping} built from it is not in the Bundle."
        )
        self.findings.append(
            Finding(severity="error", code=DROPPED, location=location, message=message, rule=rule)
        )
        # A dropped segment is reported here, not as unread input: its fields count as read.
        seen = self.seen
        for segment in scope.segments:
            base = id(segment) * 512
            seen.update(base + number for number in range(1, len(segment.fields)))

    def location(self, scope: Scope) -> str:
        """``PATIENT_RESULT(1)/ORDER_OBSERVATION(1)/OBSERVATION(7)/OBX``, or ``PV1-7(2)``.

        Each group instance is numbered among its parent's instances of that group (from 1);
        the last part is the segment that begins it.
        """
        parts: list[str] = []
        current: Scope | None = scope
        while current is not None and current.parent is not None:
            if current.group is not None:
                siblings = [
                    s for s in self.groups.get(current.group, ()) if s.parent is current.parent
                ]
                number = next((i for i, s in enumerate(siblings, 1) if s is current), 1)
                parts.append(f"{current.group}({number})")
            elif current.pins and current.pins is not current.parent.pins:
                own = {k: v for k, v in current.pins.items() if current.parent.pins.get(k) != v}
                parts.extend(f"{seg}-{fld}({rep})" for (seg, fld), (_, rep) in own.items())
            current = current.parent
        parts.reverse()
        if scope.segments:
            parts.append(scope.segments[0].name)
        return "/".join(parts)

    def settle(
        self,
        ordered: list[Instance],
        problem: Callable[[Instance], Problem | None],
    ) -> list[Instance]:
        """The instances kept once the drops, and the drops they cause in turn, are done.

        ``problem`` re-checks an instance whose references were cut. A focal instance that
        lost every item of a list of references (``result[]``) is malformed as well.

        Raises:
            CanonicalError: a resource built on the whole message became malformed, or every
                focal resource was dropped (the message has no clinical content left).
        """
        had_focus = any(i.focus for i in ordered)
        while True:
            before = self.count
            gone = {f"urn:uuid:{i.id}" for i in ordered if self.holds(i.scope)}
            for instance in ordered:
                if self.holds(instance.scope):
                    continue
                emptied = _cut(instance.resource, gone)
                if emptied is None:
                    continue
                found = problem(instance)
                if found is None and instance.focus and emptied:
                    element = f"{instance.resource['resourceType']}.{emptied[0]}"
                    found = (element, f"every {element} refers to a dropped resource")
                if found is not None:
                    self.drop(instance, found)
            if self.count == before:
                break
        kept = [i for i in ordered if not self.holds(i.scope)]
        if had_focus and not any(i.focus for i in kept):
            first = next((f for f in self.findings if f.code == DROPPED), None)
            detail = f"; first: {first.location}: {first.message}" if first else ""
            msg = (
                "no clinical content is left once the malformed segment groups are dropped "
                f"(every focal resource was dropped){detail}"
            )
            raise CanonicalError(msg, location=first.location if first else "")
        return kept


def _segment_names(scope: Scope) -> str:
    """``OBX, NTE`` or ``OBR, 20 OBX, 3 NTE``: what a group instance holds, by segment name."""
    counts: dict[str, int] = {}
    for segment in scope.segments:
        counts[segment.name] = counts.get(segment.name, 0) + 1
    return ", ".join(name if n == 1 else f"{n} {name}" for name, n in counts.items())


def _cut(node: dict[str, Any], gone: set[str]) -> list[str] | None:
    """Remove every Reference to ``gone`` from a resource; None when there was none.

    Returns the top-level list elements emptied by the cut (they are removed: FHIR JSON has no
    empty arrays), so the caller can tell a focal resource that lost all its results.
    """
    emptied: list[str] = []
    changed = _cut_in(node, gone, emptied, top=True)
    return emptied if changed else None


def _is_gone(value: Any, gone: set[str]) -> bool:
    return isinstance(value, dict) and value.get("reference") in gone


def _cut_in(node: dict[str, Any], gone: set[str], emptied: list[str], *, top: bool) -> bool:
    changed = False
    for key in list(node):
        value = node[key]
        if isinstance(value, list):
            kept = []
            for item in value:
                if _is_gone(item, gone):
                    continue
                if isinstance(item, dict) and _cut_in(item, gone, emptied, top=False):
                    changed = True
                    if not item:
                        continue
                kept.append(item)
            changed |= len(kept) != len(value)
            if kept:
                node[key] = kept
            elif value:
                del node[key]
                if top:
                    emptied.append(key)
        elif _is_gone(value, gone):
            del node[key]
            changed = True
        elif isinstance(value, dict) and _cut_in(value, gone, emptied, top=False):
            changed = True
            if not value:
                del node[key]
    return changed
