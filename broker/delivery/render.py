"""Rendering a canonical message Bundle for a subscriber: a FHIR transaction or HL7 v2 ER7."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from broker.errors import CanonicalError

if TYPE_CHECKING:
    from broker.mapping import MappingSet

__all__ = ["ENVELOPE_SYSTEM", "to_fhir_transaction", "to_hl7v2"]

ENVELOPE_SYSTEM = "urn:passerelle:envelope"
"""``Bundle.identifier.system`` of a delivered transaction; the value is the envelope id, so a
receiver can recognise a re-delivery."""


def _business_identifier(resource: dict[str, Any]) -> tuple[str, str] | None:
    identifiers = resource.get("identifier")
    if isinstance(identifiers, dict):  # 0..1 identifiers (none among the types we map today)
        identifiers = [identifiers]
    for ident in identifiers or []:
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            return ident["system"], ident["value"]
    return None


def to_fhir_transaction(bundle: dict[str, Any]) -> dict[str, Any]:
    """Turn a canonical message Bundle into a transaction Bundle that is safe to re-deliver.

    Each resource is written with a conditional update on its first business identifier
    (``PUT Patient?identifier=system|value``, FHIR R4 §3.1.0.4.3): re-delivering the same
    message updates the same resources instead of creating duplicates. A resource without an
    identifier that has a system is written by its deterministic id (``PUT Practitioner/<id>``).
    The MessageHeader is dropped: a transaction carries no message semantics. ``fullUrl`` keeps
    the message's deterministic ``urn:uuid:``, so references between entries stay consistent
    and the server resolves them to the ids it assigns (FHIR R4 §3.1.0.11.2).

    Args:
        bundle: a validated canonical message Bundle (the input is not modified).

    Returns:
        A FHIR R4 ``transaction`` Bundle as plain JSON data.

    Raises:
        CanonicalError: when ``bundle`` is not a message Bundle.
    """
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "message":
        raise CanonicalError(
            "only a canonical message Bundle can become a transaction", location="Bundle.type"
        )
    entries = []
    for entry in bundle.get("entry") or []:
        source = entry.get("resource") or {}
        resource_type = source.get("resourceType")
        if resource_type == "MessageHeader":
            continue
        # A shallow copy: nothing below the top level is changed (deepcopy was 1 ms per ORU).
        resource = dict(source)
        business = _business_identifier(resource)
        if business is not None:
            system, value = business
            url = f"{resource_type}?identifier={quote(system, safe=':/')}|{quote(value, safe='')}"
            # A conditional update must not carry an id the server never assigned (R4 §3.1.0.4.3).
            resource.pop("id", None)
        else:
            url = f"{resource_type}/{resource['id']}"
        entries.append(
            {
                "fullUrl": entry["fullUrl"],
                "resource": resource,
                "request": {"method": "PUT", "url": url},
            }
        )
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
) -> str:
    """Render ``bundle`` as ER7 text with the outbound mapping for its event.

    ``version`` is the subscriber's ``hl7_version``: it is written in MSH-12 and selects the
    mapping's version-specific fields and segments (``since:``/``until:``). A thin wrapper over
    ``MappingSet.render_hl7v2``; see it for the errors raised (a version the mapping does not
    write is a NoMappingError).
    """
    return mappings.render_hl7v2(
        bundle,
        version=version,
        control_id=control_id,
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
    )
