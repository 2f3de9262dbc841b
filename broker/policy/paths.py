"""Element paths of a policy: ``Patient.address.line``, ``Patient.telecom.where(system='phone')``.

A policy removes or masks elements, so it must find the objects that *hold* them, not copies of
their values. fhirpathpy returns copies (and costs ~24 µs per evaluation of ``Patient.address``
on a Patient, measured here, against ~1 µs for walking the same dicts), so a policy path is a
resource type and element names walked over the JSON, with an optional ``where(criterion)`` on
the last element: the criterion is FHIRPath, checked and compiled once at load
(``broker.mapping.fhir_in.fhirpath.compile_path``) and run on each candidate item.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from broker.mapping.fhir_in.fhirpath import Expression, FHIRPathSyntaxError, compile_path

__all__ = ["ABSENT_URL", "ElementPath", "parse_path"]

ABSENT_URL = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
"""The extension a masked complex element is replaced by (valueCode ``masked``)."""

_PATH = re.compile(
    r"^(?P<type>[A-Z][A-Za-z]{1,63})(?P<steps>(?:\.[a-z][A-Za-z0-9]*)+)"
    r"(?:\.where\((?P<where>.+)\))?$"
)


@dataclass(frozen=True)
class ElementPath:
    """One compiled policy path: the resource type, the element names, an optional filter."""

    text: str
    resource_type: str
    steps: tuple[str, ...]
    where: Expression | None = None

    def _holders(self, resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The objects of ``resource`` that hold the last element."""
        current = [resource]
        for step in self.steps[:-1]:
            found: list[dict[str, Any]] = []
            for node in current:
                value = node.get(step)
                if isinstance(value, list):
                    found.extend(item for item in value if isinstance(item, dict))
                elif isinstance(value, dict):
                    found.append(value)
            current = found
        return iter(current)

    def _chosen(self, item: Any) -> bool:
        if self.where is None:
            return True
        if not isinstance(item, dict):
            return False
        return self.where(item) == [True]

    def remove(self, resource: dict[str, Any]) -> int:
        """Remove the element from ``resource`` (changed in place); return how many went."""
        last, count = self.steps[-1], 0
        for holder in self._holders(resource):
            if last not in holder:
                continue
            value = holder[last]
            if self.where is None:
                del holder[last]
                count += len(value) if isinstance(value, list) else 1
                continue
            items = value if isinstance(value, list) else [value]
            kept = [item for item in items if not self._chosen(item)]
            count += len(items) - len(kept)
            if not kept:
                del holder[last]
            elif isinstance(value, list):
                holder[last] = kept
        return count

    def mask(self, resource: dict[str, Any], mask: str) -> int:
        """Replace the element's values in ``resource`` (in place); return how many were.

        A primitive value becomes ``mask``; a complex one (an address, a name) becomes an
        element holding only the data-absent-reason extension, code ``masked`` (FHIR R4
        extension ``data-absent-reason``), which keeps the receiver's validation happy.
        """
        last, count = self.steps[-1], 0
        for holder in self._holders(resource):
            if last not in holder:
                continue
            value = holder[last]
            if isinstance(value, list):
                masked = [_masked(v, mask) if self._chosen(v) else v for v in value]
                count += sum(1 for a, b in zip(masked, value, strict=True) if a is not b)
                holder[last] = masked
            elif self._chosen(value):
                holder[last] = _masked(value, mask)
                count += 1
        return count


def _masked(value: Any, mask: str) -> Any:
    if isinstance(value, dict):
        return {"extension": [{"url": ABSENT_URL, "valueCode": "masked"}]}
    return mask


def parse_path(text: str) -> ElementPath:
    """Check and compile one policy path.

    Raises:
        ValueError: the path is not ``Type.element[.element...][.where(criterion)]`` or its
            criterion is not FHIRPath; the message says what is expected.
    """
    try:
        compile_path(text)
    except FHIRPathSyntaxError as exc:
        msg = f"{text!r} is not FHIRPath ({exc})"
        raise ValueError(msg) from None
    match = _PATH.match(text.strip())
    if match is None:
        msg = (
            f"{text!r} is not a policy path; expected a resource type and element names, "
            "optionally ending with where(criterion), e.g. Patient.telecom.where(system='phone')"
        )
        raise ValueError(msg)
    where = None
    if match["where"]:
        try:
            where = compile_path(match["where"])
        except FHIRPathSyntaxError as exc:
            msg = f"the where() criterion of {text!r} is not FHIRPath ({exc})"
            raise ValueError(msg) from None
    steps = tuple(match["steps"].lstrip(".").split("."))
    return ElementPath(text, match["type"], steps, where)
