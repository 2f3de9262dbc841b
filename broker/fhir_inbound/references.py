"""References inside FHIR input: which entry each points to, and rewriting them to the new ids.

In a transaction or batch Bundle an entry is referred to by its ``fullUrl`` (often a
``urn:uuid:``) or by ``Type/id`` relative to the sender's server (FHIR R4 Bundle, "Resolving
references in Bundles"); both are rewritten to the entry's new ``urn:uuid:``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.envelope import Finding
from broker.mapping.context import TraceStep

__all__ = ["Entry", "Run", "aliases", "rewrite"]


@dataclass
class Entry:
    """One resource of the input, where it was, and the id it gets."""

    where: str
    """Where the resource is in the input: ``Bundle.entry[2].resource`` or ``Observation``."""
    resource: dict[str, Any]
    full_url: str | None
    new_id: str = ""


@dataclass
class Run:
    """What one mapping run collects: findings, unmapped locations and the reference map."""

    file: str
    """The FHIR inbound file, named in trace steps."""
    trace: list[TraceStep] | None
    findings: list[Finding] = field(default_factory=list)
    unmapped: dict[str, None] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    """Reference in the input → the ``urn:uuid:`` of the entry it points to."""
    dropped: set[str] = field(default_factory=set)
    """References to entries that are not kept."""

    def lose(self, where: str) -> None:
        self.unmapped[where] = None

    def find(self, code: str, where: str, message: str) -> None:
        self.findings.append(
            Finding(severity="warning", code=code, location=where, message=message)
        )


def aliases(entry: Entry) -> list[str]:
    """The references that point to this entry: its fullUrl and ``Type/id``."""
    found = []
    if entry.full_url:
        found.append(entry.full_url)
    kind, rid = entry.resource.get("resourceType"), entry.resource.get("id")
    if isinstance(kind, str) and isinstance(rid, str) and rid:
        found.append(f"{kind}/{rid}")
    return found


def rewrite(
    node: Any, where: str, run: Run, out: str | None = None, line: int | None = None
) -> None:
    """Point every reference to an entry of the input at its new ``urn:uuid:``, in place.

    A reference to an entry that is not kept cannot stay (a ``urn:uuid:`` would dangle): its
    ``reference`` is removed and reported, its ``identifier`` and ``display`` stay.

    ``where`` locates ``node`` in the input, ``out`` in the canonical Bundle (default: the same)
    and ``line`` is the mapping file line that keeps this resource type; both go to the trace.
    """
    out = where if out is None else out
    if isinstance(node, list):
        for index, item in enumerate(node):
            rewrite(item, f"{where}[{index}]", run, f"{out}[{index}]", line)
        return
    if not isinstance(node, dict):
        return
    literal = node.get("reference")
    if isinstance(literal, str):
        plain = literal.split("/_history/")[0]
        target = run.targets.get(literal) or run.targets.get(plain)
        if target is not None:
            node["reference"] = target
            if run.trace is not None:
                run.trace.append(
                    TraceStep(run.file, line, f"{where}.reference", f"{out}.reference", target)
                )
        elif literal in run.dropped or plain in run.dropped or literal.startswith("urn:uuid:"):
            del node["reference"]
            run.lose(f"{where}.reference")
            msg = (
                f"{where}.reference points to an entry that is not kept; the reference is left out"
            )
            run.find("dangling-reference", f"{where}.reference", msg)
    for key, value in node.items():
        if isinstance(value, dict | list):
            rewrite(value, f"{where}.{key}", run, f"{out}.{key}", line)
