"""The trail as FHIR R4: one AuditEvent per entry, in a ``collection`` Bundle.

Types are DICOM's audit event IDs (DICOM PS3.15 A.5.3, as FHIR's ``audit-event-type``
ValueSet extends them): a delivery is an *Export* (110106), a search a *Query* (110112), a view
or an operator's action on a message *Patient Record* (110110), a configuration change
*Application Activity* (110100), a login *User Authentication* (110114), reading the trail
*Audit Log Used* (110101). The broker's own action name is the ``subtype``; the chain's seq,
prev and hash ride on an entity of their own, so an exported event can be checked against the
chain. Validated with ``fhir.resources`` (R4B models) before it is returned.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

__all__ = ["SUBTYPE_SYSTEM", "audit_event", "bundle"]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SUBTYPE_SYSTEM = "https://passerelle.ma/fhir/CodeSystem/audit-action"
"""The system of ``AuditEvent.subtype``: the broker's action names (``broker.audit.ACTIONS``)."""
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_ID = "urn:passerelle:"
_TYPES = {
    "message.delivered": ("110106", "Export", "R"),
    "message.searched": ("110112", "Query", "E"),
    "message.viewed": ("110110", "Patient Record", "R"),
    "content.viewed": ("110110", "Patient Record", "R"),
    "message.replayed": ("110106", "Export", "E"),
    "message.resent": ("110106", "Export", "E"),
    "message.edited": ("110110", "Patient Record", "C"),
    "message.discarded": ("110110", "Patient Record", "D"),
    "audit.verified": ("110101", "Audit Log Used", "E"),
    "audit.exported": ("110101", "Audit Log Used", "R"),
    "audit.pruned": ("110101", "Audit Log Used", "D"),
}


def _type(action: str) -> tuple[str, str, str]:
    if action in _TYPES:
        return _TYPES[action]
    if action.startswith("access."):
        return ("110114", "User Authentication", "E")
    return ("110100", "Application Activity", "U")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _entity(kind: str, value: str) -> dict[str, Any]:
    entity: dict[str, Any] = {"what": {"identifier": {"system": _ID + kind, "value": value}}}
    if kind in ("patient", "identifiers", "identifier"):
        entity["type"] = {"system": _ENTITY_TYPE, "code": "1", "display": "Person"}
        entity["role"] = {"system": _ROLE, "code": "1", "display": "Patient"}
    else:
        entity["type"] = {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"}
    return entity


def audit_event(entry: dict[str, Any]) -> dict[str, Any]:
    """One stored entry (``broker.store.auditlog.entry_dict``) as an AuditEvent (JSON)."""
    code, display, verb = _type(entry["action"])
    targets: dict[str, Any] = entry["targets"]
    agents: list[dict[str, Any]] = [
        {"who": {"display": entry["actor"]}, "requestor": entry["actor"] != "passerelle"}
    ]
    if entry["reason"]:
        agents[0]["purposeOfUse"] = [{"text": entry["reason"]}]
    if entry["action"] == "message.delivered" and "subscriber" in targets:
        agents.append(
            {
                "who": {
                    "identifier": {"system": _ID + "subscriber", "value": targets["subscriber"]}
                },
                "requestor": False,
                "type": {"text": "recipient"},
            }
        )
    entities = [
        _entity(kind, str(value))
        for kind, values in sorted(targets.items())
        for value in (values if isinstance(values, list) else [values])
    ]
    chain = _entity("audit", str(entry["seq"]))
    chain["detail"] = [
        {"type": "prev", "valueString": entry["prev"]},
        {"type": "hash", "valueString": entry["hash"]},
    ] + [
        {"type": name, "valueString": json.dumps(value) if not isinstance(value, str) else value}
        for name, value in sorted(entry["details"].items())
        if value not in (None, "")
    ]
    entities.append(chain)
    return {
        "resourceType": "AuditEvent",
        "id": f"audit-{entry['seq']}",
        "type": {"system": DCM, "code": code, "display": display},
        "subtype": [{"system": SUBTYPE_SYSTEM, "code": entry["action"]}],
        "action": verb,
        "recorded": _iso(entry["at"]),
        "outcome": "0",
        "agent": agents,
        "source": {"observer": {"display": "Passerelle"}},
        "entity": entities,
    }


def bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The entries as a FHIR ``collection`` Bundle of AuditEvents, validated (R4B models).

    Raises:
        ValueError: a resource does not validate (a bug of this module, not of the data).
    """
    from fhir.resources.R4B.bundle import Bundle

    body = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": datetime.now(UTC).isoformat(),
        "entry": [
            {"fullUrl": f"urn:passerelle:audit:{e['seq']}", "resource": audit_event(e)}
            for e in entries
        ],
    }
    Bundle.model_validate(body)
    return body
