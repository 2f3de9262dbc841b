"""References inside FHIR input: which entry each points to, and rewriting them to the new ids.

In a transaction or batch Bundle an entry is referred to by its ``fullUrl`` (often a
``urn:uuid:``) or by ``Type/id`` relative to the sender's server (FHIR R4 Bundle, "Resolving
references in Bundles"); both are rewritten to the entry's new ``urn:uuid:``.

A literal reference to a resource of the sender's server that the input does not carry
(``Patient/pat-1001`` in a lone Condition, or ``https://his.example/fhir/Patient/pat-1001`` on
the base of the input's own ``fullUrl``) names nothing, or another resource, on the receiving
server. It becomes a logical reference (FHIR R4 datatype Reference, ``Reference.identifier``:
"when the literal reference is not known"): its ``type`` and, unless the sender gave the
target's business identifier, the identifier every resource from that adapter keeps its sender
id under (``broker.identity.resource_system``). The FHIR renderer can turn it into a conditional
reference (``broker.delivery.render``). An absolute reference to another server is left as
sent: it is resolvable where it points (R4 §2.3.0, references may point to any server).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from broker.envelope import Finding
from broker.identity import resource_system
from broker.mapping.context import TraceStep

__all__ = ["Entry", "Run", "aliases", "base_of", "rewrite"]


@dataclass
class Entry:
    """One resource of the input, where it was, and the id it gets."""

    where: str
    """Where the resource is in the input: ``Bundle.entry[2].resource`` or ``Observation``."""
    resource: dict[str, Any]
    full_url: str | None
    new_id: str = ""
    sender_id: str | None = None
    """The resource's id on the sender's server (``Resource.id`` of the input), if it had one."""


@dataclass
class Run:
    """What one mapping run collects: findings, unmapped locations and the reference map."""

    file: str
    """The FHIR inbound file, named in trace steps."""
    trace: list[TraceStep] | None
    adapter: str
    """The inbound adapter: its namespace qualifies the sender's resource ids."""
    findings: list[Finding] = field(default_factory=list)
    unmapped: dict[str, None] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    """Reference in the input → the ``urn:uuid:`` of the entry it points to."""
    dropped: set[str] = field(default_factory=set)
    """References to entries that are not kept."""
    bases: set[str] = field(default_factory=set)
    """The sender's server base URLs, read from the input's ``fullUrl``s and MessageHeader."""

    def lose(self, where: str) -> None:
        self.unmapped[where] = None

    def find(self, code: str, where: str, message: str) -> None:
        self.findings.append(
            Finding(severity="warning", code=code, location=where, message=message)
        )


_LITERAL = re.compile(
    r"^(?:(?P<base>https?://\S+)/)?(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)
"""A literal reference ``[base/]Type/id[/_history/version]`` (FHIR R4 Reference.reference)."""


def base_of(full_url: str, kind: str, rid: str) -> str | None:
    """The server base of an entry's ``fullUrl`` ``<base>/<Type>/<id>``, else None."""
    suffix = f"/{kind}/{rid}"
    if full_url.startswith(("http://", "https://")) and full_url.endswith(suffix):
        return full_url[: -len(suffix)]
    return None


def _sender_resource(literal: str, run: Run) -> tuple[str, str] | None:
    """``(Type, id)`` when ``literal`` names a resource of the sender's own server."""
    found = _LITERAL.match(literal)
    if found is None:
        return None
    base = found["base"]
    if base is not None and base not in run.bases:
        return None  # another server's resource: resolvable where it points
    return found["type"], found["id"]


def _to_logical(node: dict[str, Any], kind: str, rid: str, run: Run) -> None:
    """Replace ``reference`` by ``type`` and an identifier of the target (module docstring)."""
    del node["reference"]
    node.setdefault("type", kind)
    given = node.get("identifier")
    if not (isinstance(given, dict) and isinstance(given.get("value"), str) and given["value"]):
        node["identifier"] = {"system": resource_system(run.adapter, kind), "value": rid}


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
    ``reference`` is removed and reported, its ``identifier`` and ``display`` stay. A reference
    to a resource of the sender's server outside the input becomes a logical reference (module
    docstring).

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
        else:
            found = _sender_resource(literal, run)
            if found is not None:
                _to_logical(node, *found, run)
                if run.trace is not None:
                    step = TraceStep(
                        run.file,
                        line,
                        f"{where}.reference",
                        f"{out}.identifier",
                        node["identifier"],
                    )
                    run.trace.append(step)
    for key, value in node.items():
        if isinstance(value, dict | list):
            rewrite(value, f"{where}.{key}", run, f"{out}.{key}", line)
