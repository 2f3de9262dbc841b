"""Rendering a canonical message Bundle for a subscriber: a FHIR transaction or HL7 v2 ER7."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.errors import CanonicalError
from broker.identity import PASSERELLE_ID_SYSTEM, conditional_identifier, conditional_url

if TYPE_CHECKING:
    from broker.mapping import MappingSet

__all__ = ["ENVELOPE_SYSTEM", "to_fhir_transaction", "to_hl7v2"]

ENVELOPE_SYSTEM = "urn:passerelle:envelope"
"""``Bundle.identifier.system`` of a delivered transaction; the value is the envelope id, so a
receiver can recognise a re-delivery."""


_NO_IDENTIFIER = frozenset({"Binary", "Bundle", "OperationOutcome", "Parameters", "Provenance"})
"""R4 resource types without an ``identifier`` element: only their id can address them."""


def _same(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Equal but for the id: the same resource mapped twice."""
    return {k: v for k, v in first.items() if k != "id"} == {
        k: v for k, v in second.items() if k != "id"
    }


def _is(ident: Any, found: tuple[str, str]) -> bool:
    return isinstance(ident, dict) and (ident.get("system"), ident.get("value")) == found


def _rewritten(node: Any, fix: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """``node`` with ``fix``'s changes applied to every object in it, copy on write.

    ``fix`` returns the keys to set on one object (empty: none). Containers are copied only on
    the path to a change, since the entries share everything below the top level with the
    canonical Bundle.
    """
    if isinstance(node, list):
        items = [_rewritten(item, fix) for item in node]
        return items if any(a is not b for a, b in zip(items, node, strict=True)) else node
    if not isinstance(node, dict):
        return node
    changed = fix(node)
    for key, value in node.items():
        if key not in changed and isinstance(value, dict | list):
            new = _rewritten(value, fix)
            if new is not value:
                changed[key] = new
    return node | changed if changed else node


def _redirect(node: Any, merged: dict[str, str]) -> Any:
    """``node`` with each ``reference`` to a merged entry's fullUrl pointing at the one kept."""

    def fix(obj: dict[str, Any]) -> dict[str, Any]:
        reference = obj.get("reference")
        if isinstance(reference, str) and reference in merged:
            return {"reference": merged[reference]}
        return {}

    return _rewritten(node, fix)


_TYPE = re.compile(r"^(?:http://hl7\.org/fhir/StructureDefinition/)?([A-Z][A-Za-z]{1,63})$")
"""``Reference.type``: a resource type, or its base StructureDefinition URL (R4 datatype Reference)."""


def _conditional(node: Any) -> Any:
    """``node`` with each logical reference given a conditional reference (copy on write).

    A Reference without ``reference`` but with ``type`` and an ``identifier`` that has a system
    and a value (what FHIR input's references to the sender's own resources become,
    ``broker.fhir_inbound.references``) gets ``reference: Type?identifier=system|value``; the
    server resolves it to the one resource with that identifier, or fails the transaction
    (FHIR R4 §3.1.0.11.2, "conditional references").
    """
    return _rewritten(node, _conditional_reference)


def _conditional_reference(obj: dict[str, Any]) -> dict[str, Any]:
    kind, ident = obj.get("type"), obj.get("identifier")
    if "reference" in obj or not isinstance(kind, str) or not isinstance(ident, dict):
        return {}
    match = _TYPE.match(kind)
    found = conditional_identifier({"identifier": [ident]})
    if match is None or found is None:
        return {}
    return {"reference": conditional_url(match[1], *found)}


def to_fhir_transaction(
    bundle: dict[str, Any], *, client_ids: bool = False, conditional_references: bool = False
) -> dict[str, Any]:
    """Turn a canonical message Bundle into a transaction Bundle that is safe to re-deliver.

    Each resource is written with a conditional update on its first identifier that has a
    system (``PUT Patient?identifier=system|value``, FHIR R4 §3.1.0.4.3, the identity of
    ``broker.identity.conditional_identifier``): re-delivering the same message updates the
    same resources instead of creating duplicates. A resource without such an identifier gets
    a Passerelle identifier (``urn:passerelle:id`` and its deterministic id) and is written by
    it, so no entry relies on the optional update-as-create of client ids; ``client_ids``
    (the subscriber's ``client_ids: true``) writes those as ``PUT Type/<id>`` instead.

    No two entries share a conditional URL: FHIR forbids it in a transaction (R4 §3.1.0.11.2,
    "a resource can only appear in a transaction once") and servers refuse the whole Bundle.
    The mappings make identifiers unique (docs/mappings.md, "Identifiers"); should two
    resources still share one, a resource equal to the first but for its id (one practitioner
    in two roles) is merged into it, references included, and a different one loses the shared
    identifier and is written by its Passerelle identifier. Keeping the shared identifier on
    both would leave two resources on the server that the next conditional update on it
    matches at once, which servers refuse (R4 §3.1.0.4.3, 412).

    A logical reference (``type`` and ``identifier``, no ``reference``: what a reference of FHIR
    input to a resource of the sender's server becomes) is delivered as it is, unless
    ``conditional_references`` (the subscriber's ``conditional_references: true``) asks for a
    conditional reference ``Type?identifier=system|value`` (``_conditional``): the server then
    links it to the resource carrying that identifier, or refuses the transaction when there is
    none, and the delivery becomes a dead letter naming the entry (docs/reliability.md).

    The MessageHeader is dropped: a transaction carries no message semantics. ``fullUrl`` keeps
    the message's deterministic ``urn:uuid:``, so references between entries stay consistent
    and the server resolves them to the ids it assigns (FHIR R4 §3.1.0.11.2).

    Args:
        bundle: a validated canonical message Bundle (the input is not modified).
        client_ids: write resources without an identifier by their id (``PUT Type/<id>``).
        conditional_references: give logical references a conditional reference.

    Returns:
        A FHIR R4 ``transaction`` Bundle as plain JSON data.

    Raises:
        CanonicalError: when ``bundle`` is not a message Bundle.
    """
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "message":
        raise CanonicalError(
            "only a canonical message Bundle can become a transaction", location="Bundle.type"
        )
    entries: list[dict[str, Any]] = []
    used: dict[str, dict[str, Any]] = {}
    merged: dict[str, str] = {}
    for entry in bundle.get("entry") or []:
        source = entry.get("resource") or {}
        resource_type = str(source.get("resourceType"))
        if resource_type == "MessageHeader":
            continue
        # A shallow copy: only the top-level id and identifier list change (deepcopy was 1 ms
        # per ORU).
        resource = dict(source)
        found = conditional_identifier(resource)
        url = conditional_url(resource_type, *found) if found is not None else None
        if url is not None and url in used:
            first = used[url]
            if _same(first["resource"], resource):
                # The same resource twice (one practitioner in two roles): one entry.
                merged[entry["fullUrl"]] = first["fullUrl"]
                continue
            # Two different resources claim one identifier: the later is written by its own.
            assert found is not None
            resource["identifier"] = [i for i in resource["identifier"] if not _is(i, found)]
            url = None
        if url is None:
            if client_ids or resource_type in _NO_IDENTIFIER:
                url = f"{resource_type}/{resource['id']}"
            else:
                own = {"system": PASSERELLE_ID_SYSTEM, "value": resource["id"]}
                resource["identifier"] = [*(resource.get("identifier") or []), own]
                url = conditional_url(resource_type, own["system"], own["value"])
        if url in used:
            # Resource ids are unique in a canonical Bundle (uuid5 of source, control id, role).
            msg = f"two {resource_type} entries have the same id"
            raise CanonicalError(msg, location="Bundle.entry.resource.id")
        written = {"fullUrl": entry["fullUrl"], "resource": resource}
        used[url] = written
        entries.append(written | {"request": {"method": "PUT", "url": url}})
    if merged:
        for written in entries:
            written["resource"] = _redirect(written["resource"], merged)
    if conditional_references:
        for written in entries:
            written["resource"] = _conditional(written["resource"])
    for written in entries:
        if "?" in written["request"]["url"]:
            # A conditional update must not carry an id the server never assigned (R4 §3.1.0.4.3).
            written["resource"].pop("id", None)
    transaction: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": entries,
    }
    if bundle.get("id"):
        transaction["id"] = bundle["id"]
    return transaction


def to_hl7v2(
    bundle: dict[str, Any],
    mappings: MappingSet,
    *,
    version: str,
    control_id: str,
    receiving_application: str,
    receiving_facility: str,
    charset: str = "utf-8",
) -> str:
    """Render ``bundle`` as ER7 text with the outbound mapping for its event.

    ``version`` is the subscriber's ``hl7_version``: it is written in MSH-12 and selects the
    mapping's version-specific fields and segments (``since:``/``until:``); ``charset`` is the
    subscriber's, named in MSH-18. A thin wrapper over
    ``MappingSet.render_hl7v2``; see it for the errors raised (a version the mapping does not
    write is a NoMappingError).
    """
    return mappings.render_hl7v2(
        bundle,
        version=version,
        control_id=control_id,
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
        charset=charset,
    )
