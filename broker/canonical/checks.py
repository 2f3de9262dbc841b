"""Invariants of a canonical message beyond FHIR R4 validity: what the network needs to route it."""

from __future__ import annotations

from typing import Any

from broker.errors import CanonicalError

__all__ = ["check"]


def check(event: str, bundle: dict[str, Any]) -> None:
    """Refuse a canonical message that names no identified patient.

    Every event the network carries (ADT, ORU, orders, …) is about a patient, and subscribers
    file it under a business identifier (FHIR conditional update on ``Patient.identifier``). A
    message whose PID is missing, or has no identifier, is quarantined with that reason instead
    of being delivered as a patient-less bundle.

    Raises:
        CanonicalError: no Patient resource, or none with an identifier value.
    """
    patients = [
        e.get("resource", {})
        for e in bundle.get("entry", [])
        if e.get("resource", {}).get("resourceType") == "Patient"
    ]
    if not patients:
        msg = f"{event} has no patient (PID is missing); every message must identify its patient"
        raise CanonicalError(msg, location="PID")
    if not any(i.get("value") for p in patients for i in p.get("identifier", [])):
        msg = (
            f"{event} names a patient without an identifier (PID-3 is empty); expected at least one"
        )
        raise CanonicalError(msg, location="PID-3")
