"""Edits are new messages: what an operator's correction changed, and whether it is an identity's.

An edit-and-replay never rewrites the message it corrects: the corrected canonical Bundle
becomes a new envelope (a new id) linked to the original (``Envelope.edit_of``), checked as any
mapped message is (``validate_bundle``: FHIR R4 and the Bundle's structure; ``check``: an
identified patient and the event's own resources), kept by the store beside the original with
the diff (``Envelope.edit``: the changed paths with their old and new values, patient data that
stays in the store), while the audit trail gets the paths and the diff's digest only.

A correction that changes a Patient's identifiers (PID-3, ``Patient.identifier``) would send
one patient's data under another's identity (a conditional update that overwrites a real
record): it needs the ``identity.edit`` permission (admin).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pydantic_core

__all__ = ["changes", "diff_digest", "patient_identifiers"]


def _walk(old: Any, new: Any, path: str, out: list[dict[str, Any]]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) | set(new)):
            _walk(old.get(name), new.get(name), f"{path}.{name}" if path else name, out)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            _walk(a, b, f"{path}[{index}]", out)
    elif old != new:
        out.append({"path": path or "Bundle", "old": old, "new": new})


def changes(original: dict[str, Any], corrected: dict[str, Any]) -> list[dict[str, Any]]:
    """Every element that differs, as ``{"path": "entry[1].resource.birthDate", "old", "new"}``.

    A list of a different length is one change at the list's path.
    """
    out: list[dict[str, Any]] = []
    _walk(original, corrected, "", out)
    return out


def diff_digest(diff: list[dict[str, Any]]) -> str:
    """SHA-256 of the diff's JSON: what the audit trail holds of its values."""
    return hashlib.sha256(pydantic_core.to_json(diff)).hexdigest()


def patient_identifiers(bundle: dict[str, Any] | None) -> set[tuple[str, str]]:
    """The ``(system, value)`` of every identifier of every Patient of the Bundle."""
    found: set[tuple[str, str]] = set()
    for entry in (bundle or {}).get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
            continue
        for identifier in resource.get("identifier") or []:
            if isinstance(identifier, dict):
                found.add((str(identifier.get("system") or ""), str(identifier.get("value") or "")))
    return found
