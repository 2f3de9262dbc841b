"""Invariants of a canonical message beyond FHIR R4 validity: what the network needs to route it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.errors import CanonicalError

__all__ = ["check"]

Resource = dict[str, Any]

# The resource each event family is about, and the segment that carries it (v2.5.1 ch. 4 ORM/OML,
# ch. 10 SIU, ch. 9 MDM, ch. 4 VXU). A message of the family without it is refused.
_FOCAL: dict[str, tuple[str, str, str]] = {
    "ORM": ("ServiceRequest", "ORC/OBR", "an order"),
    "OML": ("ServiceRequest", "ORC/OBR", "a laboratory order"),
    "SIU": ("Appointment", "SCH", "an appointment"),
    "MDM": ("DocumentReference", "TXA", "a document"),
    "VXU": ("Immunization", "RXA", "a vaccine administration"),
}


def check(event: str, bundle: dict[str, Any]) -> None:
    """Refuse a canonical message that names no identified patient or lacks its required content.

    Every event the network carries (ADT, ORU, orders, …) is about a patient, and subscribers
    file it under a business identifier (FHIR conditional update on ``Patient.identifier``). A
    message whose PID is missing, or any of whose patients has no identifier, is quarantined with
    that reason instead of being delivered as a patient-less bundle. Orders, appointments, documents and
    immunizations must also carry their own resource, tied to that patient: ServiceRequest.subject,
    an Appointment participant, DocumentReference.subject and content, Immunization.patient.

    Raises:
        CanonicalError: no Patient resource, one without an identifier value, or the event family's
            resource is missing or not tied to the patient (the message names which).
    """
    resources = [e.get("resource", {}) for e in bundle.get("entry", [])]
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if not patients:
        msg = f"{event} has no patient (PID is missing); every message must identify its patient"
        raise CanonicalError(msg, location="PID")
    # Every patient, not just one: the results of a second PATIENT_RESULT whose PID-3 is empty
    # must not reach a subscriber under an unidentified Patient (issue 8: a missing patient
    # identity quarantines the whole message, it is never a droppable part).
    unidentified = [
        n
        for n, p in enumerate(patients, 1)
        if not any(i.get("value") for i in p.get("identifier", []))
    ]
    if unidentified:
        which = "" if len(patients) == 1 else f" (patient {unidentified[0]} of {len(patients)})"
        msg = (
            f"{event} names no identified patient{which} (PID is missing or PID-3 is empty); "
            "expected at least one patient identifier"
        )
        raise CanonicalError(msg, location="PID-3")
    focal = _FOCAL.get(event.partition("^")[0])
    if focal is None:
        return
    resource_type, segment, what = focal
    found = [r for r in resources if r.get("resourceType") == resource_type]
    if not found:
        msg = f"{event} carries no {resource_type} ({segment} is missing); expected {what}"
        raise CanonicalError(msg, location=segment)
    patient_refs = {
        entry.get("fullUrl")
        for entry in bundle.get("entry", [])
        if entry.get("resource", {}).get("resourceType") == "Patient"
    }
    for resource in found:
        _CHECKS[resource_type](event, resource, patient_refs)


def _refers(reference: Any, patients: set[Any]) -> bool:
    return isinstance(reference, dict) and reference.get("reference") in patients


def _service_request(event: str, resource: Resource, patients: set[Any]) -> None:
    if not _refers(resource.get("subject"), patients):
        msg = f"{event} has an order whose ServiceRequest.subject is not the message's patient"
        raise CanonicalError(msg, location="ServiceRequest.subject")


def _appointment(event: str, resource: Resource, patients: set[Any]) -> None:
    actors = [p.get("actor") for p in resource.get("participant", [])]
    if not any(_refers(actor, patients) for actor in actors):
        msg = f"{event} has an Appointment without the patient among its participants"
        raise CanonicalError(msg, location="Appointment.participant")


def _document_reference(event: str, resource: Resource, patients: set[Any]) -> None:
    if not _refers(resource.get("subject"), patients):
        msg = f"{event} has a DocumentReference whose subject is not the message's patient"
        raise CanonicalError(msg, location="DocumentReference.subject")
    attachments = [c.get("attachment", {}) for c in resource.get("content", [])]
    if not any(a.get("data") or a.get("url") for a in attachments):
        msg = (
            f"{event} carries a document without content (no OBX with the text or an ED); "
            "expected the document body"
        )
        raise CanonicalError(msg, location="OBX-5")


def _immunization(event: str, resource: Resource, patients: set[Any]) -> None:
    if not _refers(resource.get("patient"), patients):
        msg = f"{event} has an Immunization whose patient is not the message's patient"
        raise CanonicalError(msg, location="Immunization.patient")


_CHECKS: dict[str, Callable[[str, Resource, set[Any]], None]] = {
    "ServiceRequest": _service_request,
    "Appointment": _appointment,
    "DocumentReference": _document_reference,
    "Immunization": _immunization,
}
