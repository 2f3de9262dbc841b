"""Resolving the references inside a FHIR R4 Bundle, for tests: written from the spec, not the broker.

FHIR R4 (4.0.1) §2.36.4.1 "Resolving references in Bundles" (bundle.html#references) and the
datatype Reference (references.html, §2.3.0): what this oracle accepts, for every
``Reference.reference`` found anywhere in an entry's resource (``valueReference`` and the
references inside extensions included):

- ``#id``: a contained resource of the same resource (``#`` alone is the container itself);
- an absolute reference (``urn:uuid:``, ``urn:oid:``, ``http(s)://``): an entry whose
  ``fullUrl`` is that URL. A version-specific one (``.../_history/v``) loses its version for the
  match and must then match the entry's ``meta.versionId``;
- a relative ``Type/id``: resolved against the base of the referring entry's ``fullUrl`` when
  that is a RESTful URL (``[base]/Type/id``): ``[base]/Type/id`` must be an entry's
  ``fullUrl``. From an entry whose ``fullUrl`` is a ``urn:`` (no base) it resolves to nothing
  in the Bundle, so it is reported: a message must carry what it refers to;
- a conditional reference ``Type?query`` (R4 http.html §3.1.0.11.2, "conditional references"):
  only in a ``transaction`` or ``batch`` Bundle, and only where the entry is a request (it has
  ``request``); the server resolves it, so its target is not looked for here;
- a Reference with no ``reference`` (a logical reference: ``identifier`` and/or ``display``
  only) is fine; its ``type``, when given, must be a resource type name.

A resolved literal reference must also agree with its ``type`` when both are given, and the
entry found must hold a resource. It deliberately imports nothing from ``broker``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Problem", "references", "unresolved"]

# R4 §3.1.0.1.2 / bundle.html: the RESTful URL of a resource, [base]/Type/id[/_history/vid].
_RESTFUL = re.compile(
    r"^(?P<base>https?://.+)/(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)
_RELATIVE = re.compile(
    r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/(?P<vid>[A-Za-z0-9\-.]{1,64}))?$"
)
_CONDITIONAL = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)\?\S+$")
_HISTORY = re.compile(r"^(?P<url>.+)/_history/(?P<vid>[A-Za-z0-9\-.]{1,64})$")
_TYPE_NAME = re.compile(r"^(?:http://hl7\.org/fhir/StructureDefinition/)?(?P<type>[A-Z][A-Za-z]+)$")


@dataclass(frozen=True)
class Problem:
    """One reference that does not resolve: where it is, what it says and why it fails."""

    entry: int
    resource: str
    path: str
    reference: str
    why: str

    def __str__(self) -> str:
        return (
            f"Bundle.entry[{self.entry}].resource ({self.resource}) {self.path}: "
            f"{self.reference!r} {self.why}"
        )


def references(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Reference (an object with a string ``reference``, or a logical one) under ``node``.

    A logical reference is recognised by its shape: an object with ``identifier`` as an object
    and ``type`` or ``display`` beside it and no ``reference``. Yields ``(path, reference)``.
    """
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str) or (
            isinstance(node.get("identifier"), dict) and ("type" in node or "display" in node)
        ):
            yield path, node
        for key, value in node.items():
            if key not in ("reference", "contained"):
                yield from references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from references(item, f"{path}[{index}]")


def _target_type(reference: dict[str, Any]) -> str | None:
    kind = reference.get("type")
    if not isinstance(kind, str):
        return None
    match = _TYPE_NAME.match(kind)
    return match["type"] if match else "?"


def unresolved(bundle: dict[str, Any]) -> list[Problem]:
    """Every reference of ``bundle`` that the rules of the module docstring do not resolve."""
    entries = bundle.get("entry") or []
    by_url = {e["fullUrl"]: e for e in entries if isinstance(e.get("fullUrl"), str)}
    requests_allowed = bundle.get("type") in ("transaction", "batch")
    problems: list[Problem] = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") or {}
        kind = str(resource.get("resourceType"))
        name = f"{kind}/{resource.get('id', '(no id)')}"
        contained = {c.get("id") for c in resource.get("contained") or [] if isinstance(c, dict)}
        full_url = entry.get("fullUrl")
        restful = _RESTFUL.match(full_url) if isinstance(full_url, str) else None

        def fail(path: str, value: str, why: str, index: int = index, name: str = name) -> None:
            problems.append(Problem(index, name, path, value, why))

        for path, reference in references(resource, kind):
            declared = _target_type(reference)
            if declared == "?":
                fail(path, str(reference.get("type")), "Reference.type is not a resource type")
                continue
            value = reference.get("reference")
            if value is None:
                continue  # a logical reference: identifier and/or display only
            if value.startswith("#"):
                if value != "#" and value[1:] not in contained:
                    fail(path, value, "names no contained resource of this resource")
                continue
            conditional = _CONDITIONAL.match(value)
            if conditional is not None:
                if not requests_allowed or "request" not in entry:
                    fail(
                        path,
                        value,
                        "is a conditional reference, allowed only in a transaction or batch "
                        "request (R4 §3.1.0.11.2)",
                    )
                elif declared is not None and declared != conditional["type"]:
                    fail(path, value, f"searches {conditional['type']} but type is {declared}")
                continue
            relative = _RELATIVE.match(value)
            version: str | None = None
            if relative is not None:
                if restful is None:
                    fail(
                        path,
                        value,
                        "is relative but the entry's fullUrl has no RESTful base to resolve it "
                        "against (R4 §2.36.4.1): it names nothing in the Bundle",
                    )
                    continue
                url = f"{restful['base']}/{relative['type']}/{relative['id']}"
                version = relative["vid"]
            elif re.match(r"^(urn:uuid:|urn:oid:|https?://)", value):
                history = _HISTORY.match(value) if value.startswith("http") else None
                url, version = (history["url"], history["vid"]) if history else (value, None)
            else:
                fail(path, value, "is neither #id, Type/id, Type?query nor an absolute URL")
                continue
            target = by_url.get(url)
            if target is None or not isinstance(target.get("resource"), dict):
                fail(path, value, "names no entry of the Bundle (no fullUrl matches)")
                continue
            found = target["resource"]
            if version is not None and (found.get("meta") or {}).get("versionId") != version:
                fail(path, value, "names a version the entry does not have (meta.versionId)")
            elif declared is not None and found.get("resourceType") != declared:
                fail(path, value, f"is a {found.get('resourceType')} but type is {declared}")
    return problems
