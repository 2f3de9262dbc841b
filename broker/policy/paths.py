"""Element paths of a policy: ``Patient.address.line``, ``Patient.telecom.where(system='phone')``.

A policy removes or masks elements, so it must find the objects that *hold* them, not copies of
their values. fhirpathpy returns copies (and costs ~24 µs per evaluation of ``Patient.address``
on a Patient, measured here, against ~1 µs for walking the same dicts), so a policy path is a
resource type and element names walked over the JSON, with an optional ``where(criterion)`` on
the last element: the criterion is FHIRPath, checked and compiled once at load
(``broker.mapping.fhir_in.fhirpath.compile_path``) and run on each candidate item.

Removing and masking copy on write: the resource returned is new only along the paths to the
holders changed and shares everything else with the canonical resource, which other
subscribers of the message read too (deep-copying the Patient instead was a quarter of a
typical policy's cost).
"""

from __future__ import annotations

import re
from collections.abc import Callable
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


_Change = Callable[[dict[str, Any]], tuple[dict[str, Any], int]]
"""A change to one holder of a path's last element: the holder (a new one if changed), a count."""


@dataclass(frozen=True)
class ElementPath:
    """One compiled policy path: the resource type, the element names, an optional filter."""

    text: str
    resource_type: str
    steps: tuple[str, ...]
    where: Expression | None = None

    def removed(self, resource: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """``resource`` without the element, and how many values went.

        Copy on write: the objects on the path to a changed holder are new, everything else is
        shared with ``resource``, which is never changed (``resource`` itself when nothing is).
        """
        return self._rewrite(resource, 0, self._remove_from)

    def masked(self, resource: dict[str, Any], mask: str) -> tuple[dict[str, Any], int]:
        """``resource`` with the element's values masked, and how many were (copy on write).

        A primitive value becomes ``mask``; a complex one (an address, a name) becomes an
        element holding only the data-absent-reason extension, code ``masked`` (FHIR R4
        extension ``data-absent-reason``), which keeps the receiver's validation happy.
        """
        return self._rewrite(resource, 0, lambda holder: self._mask_in(holder, mask))

    def _rewrite(
        self, node: dict[str, Any], depth: int, change: _Change
    ) -> tuple[dict[str, Any], int]:
        """``change`` applied to every holder of the last element under ``node``."""
        if depth == len(self.steps) - 1:
            return change(node)
        step = self.steps[depth]
        value = node.get(step)
        if isinstance(value, dict):
            new, count = self._rewrite(value, depth + 1, change)
            return (node if new is value else {**node, step: new}), count
        if not isinstance(value, list):
            return node, 0
        items: list[Any] | None = None
        total = 0
        for index, item in enumerate(value):
            if isinstance(item, dict):
                new, count = self._rewrite(item, depth + 1, change)
                total += count
                if new is not item:
                    if items is None:
                        items = list(value)
                    items[index] = new
        return (node if items is None else {**node, step: items}), total

    def _chosen(self, item: Any) -> bool:
        if self.where is None:
            return True
        if not isinstance(item, dict):
            return False
        return self.where(item) == [True]

    def _remove_from(self, holder: dict[str, Any]) -> tuple[dict[str, Any], int]:
        last = self.steps[-1]
        if last not in holder:
            return holder, 0
        value = holder[last]
        if self.where is None:
            count = len(value) if isinstance(value, list) else 1
            return _without(holder, last), count
        items = value if isinstance(value, list) else [value]
        kept = [item for item in items if not self._chosen(item)]
        if not kept:
            return _without(holder, last), len(items)
        if len(kept) == len(items):
            return holder, 0
        return {**holder, last: kept}, len(items) - len(kept)

    def _mask_in(self, holder: dict[str, Any], mask: str) -> tuple[dict[str, Any], int]:
        last = self.steps[-1]
        if last not in holder:
            return holder, 0
        value = holder[last]
        if isinstance(value, list):
            masked = [_masked(v, mask) if self._chosen(v) else v for v in value]
            count = sum(1 for a, b in zip(masked, value, strict=True) if a is not b)
            return ({**holder, last: masked} if count else holder), count
        if self._chosen(value):
            return {**holder, last: _masked(value, mask)}, 1
        return holder, 0


def _without(holder: dict[str, Any], name: str) -> dict[str, Any]:
    copy = dict(holder)
    del copy[name]
    return copy


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
