"""Normalisation of FHIR input: local identifier systems, code systems and codes to national ones.

Applied to every element of a resource, wherever it is: each Identifier (an ``identifier``
element, also inside a Reference) has its ``system`` looked up in the identifier-system table;
each Coding (``system`` and ``code``, no ``value``) its ``system`` in the code-system table;
and a Coding in a ``coding`` list whose system has a code table (a local lab code → LOINC) gets
the table's coding added before it. The local coding is kept: CodeableConcept.coding may carry
several representations of one concept (FHIR R4 datatype CodeableConcept), so nothing is lost.

Given the inbound adapter, an Identifier's system is first looked up in the adapter's
``identifier_systems`` (``local:`` entries), and an Identifier without a system gets the
adapter's namespace (``identity.local_system``): every identifier delivered has a system, so a
FHIR server finds the resource again by it (``broker.identity``). Likewise a Coding without a
system gets the adapter's local code system (``identity.local_code_system``, named by the
element: ``observation-code``).

The CIN has one type on every path: an Identifier in the CIN system, or typed with a v2-0203
``NNxxx`` national person code (not a code of terminology.hl7.org's v2-0203, which holds only
the placeholder), is typed ``NI`` (national unique individual identifier), as the HL7 v2
mappings type CX-5 ``NNMAR``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.identity import IdentifierSystem, fhir_system, local_code_system
from broker.mapping.context import TraceStep

__all__ = ["Normaliser", "Table"]


@dataclass(frozen=True)
class Table:
    """A lookup table: key → value, with the file and line of each entry (for ``--trace``)."""

    values: dict[str, Any]
    lines: dict[str, tuple[str, int | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Normaliser:
    """The three tables of one normalisation (a base's, or a site's merged over it)."""

    identifier_systems: Table
    code_systems: Table
    codes: dict[str, tuple[str, Table]]
    """Code system URI → (shared table name, the table's codes → Coding)."""

    def apply(
        self,
        resource: dict[str, Any],
        where: str,
        trace: list[TraceStep] | None,
        *,
        adapter: str | None = None,
        adapter_rules: Sequence[IdentifierSystem] = (),
    ) -> set[str]:
        """Normalise ``resource`` in place; returns the names of the code tables used.

        With ``adapter``, identifiers also get the adapter's systems (module docstring).
        """
        used: set[str] = set()
        local = (adapter, len(where), str(resource.get("resourceType", "")))
        self._visit(resource, where, trace, used, (adapter, adapter_rules), local)
        return used

    def _visit(
        self,
        node: Any,
        where: str,
        trace: list[TraceStep] | None,
        used: set[str],
        ids: tuple[str | None, Sequence[IdentifierSystem]],
        local: tuple[str | None, int, str],
    ) -> None:
        if isinstance(node, list):
            for index, item in enumerate(node):
                self._visit(item, f"{where}[{index}]", trace, used, ids, local)
            return
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            path = f"{where}.{key}"
            if key == "identifier":
                for at, ident in _each(value, path):
                    self._identify(ident, at, trace, ids)
                    # A resource's own identifiers (a list); a Reference's lone one stays as sent.
                    _national_type(ident, add=isinstance(value, list))
            elif key == "coding" and isinstance(value, list):
                adapter, prefix, kind = local
                if adapter is not None:
                    _local_systems(value, kind + where[prefix:], adapter)
                self._codings(value, path, trace, used)
            if isinstance(value, dict | list):
                self._visit(value, path, trace, used, ids, local)
        if _is_coding(node):
            self._rename(node, self.code_systems, where, trace)

    def _identify(
        self,
        ident: dict[str, Any],
        where: str,
        trace: list[TraceStep] | None,
        ids: tuple[str | None, Sequence[IdentifierSystem]],
    ) -> None:
        adapter, rules = ids
        if adapter is not None and isinstance(ident.get("value"), str):
            system = fhir_system(adapter, rules, ident)
            if system is not None:
                ident["system"] = system
                if trace is not None:
                    trace.append(TraceStep("", None, f"{where}.system", f"{where}.system", system))
                return
        self._rename(ident, self.identifier_systems, where, trace)

    def _codings(
        self, codings: list[Any], where: str, trace: list[TraceStep] | None, used: set[str]
    ) -> None:
        added: list[tuple[int, dict[str, Any]]] = []
        for index, coding in enumerate(codings):
            if not _is_coding(coding):
                continue
            self._rename(coding, self.code_systems, f"{where}[{index}]", trace)
            found = self.codes.get(coding["system"])
            if found is None:
                continue
            name, table = found
            target = table.values.get(coding["code"])
            if not isinstance(target, dict) or any(
                c.get("system") == target.get("system") and c.get("code") == target.get("code")
                for c in codings
                if isinstance(c, dict)
            ):
                continue
            used.add(name)
            added.append((index, dict(target)))
            if trace is not None:
                file, line = table.lines.get(coding["code"], ("", None))
                step = TraceStep(file, line, f"{where}[{index}].code", f"{where}[]", target)
                trace.append(step)
        for offset, (index, coding) in enumerate(added):
            codings.insert(index + offset, coding)

    @staticmethod
    def _rename(
        element: dict[str, Any], table: Table, where: str, trace: list[TraceStep] | None
    ) -> None:
        system = element.get("system")
        if not isinstance(system, str):
            return
        target = table.values.get(system)
        if not isinstance(target, str) or target == system:
            return
        element["system"] = target
        if trace is not None:
            file, line = table.lines.get(system, ("", None))
            trace.append(TraceStep(file, line, f"{where}.system", f"{where}.system", target))


def _each(value: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(value, dict):
        return [(where, value)]
    if isinstance(value, list):
        return [(f"{where}[{i}]", v) for i, v in enumerate(value) if isinstance(v, dict)]
    return []


def _is_coding(node: Any) -> bool:
    """A Coding: ``system`` and ``code`` strings and no ``value`` (a Quantity has one)."""
    return (
        isinstance(node, dict)
        and isinstance(node.get("system"), str)
        and isinstance(node.get("code"), str)
        and "value" not in node
    )


CIN_SYSTEM = "https://passerelle.ma/fhir/sid/cin"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_NATIONAL_PERSON = re.compile(r"^NN[A-Z]{3}$")


def _national_type(ident: dict[str, Any], *, add: bool) -> None:
    """Type the CIN (and any v2-0203 NNxxx national person identifier) NI, as the HL7 path does."""
    kind = ident.get("type")
    codings = kind.get("coding") if isinstance(kind, dict) else None
    national = [
        c
        for c in (codings if isinstance(codings, list) else [])
        if isinstance(c, dict)
        and c.get("system") == V2_0203
        and isinstance(c.get("code"), str)
        and _NATIONAL_PERSON.match(c["code"])
    ]
    for coding in national:
        coding["code"] = "NI"
        coding["display"] = "National unique individual identifier"
    if add and ident.get("system") == CIN_SYSTEM and not kind:
        ident["type"] = {"coding": [{"system": V2_0203, "code": "NI"}]}


def _local_systems(codings: list[Any], where: str, adapter: str) -> None:
    """Give each Coding without a system the adapter's local code system, named by ``where``."""
    element = re.sub(r"\[\d+\]", "", where).replace(".", "-")
    for coding in codings:
        is_coding = isinstance(coding, dict) and isinstance(coding.get("code"), str)
        if is_coding and not coding.get("system"):
            coding["system"] = local_code_system(adapter, element)
