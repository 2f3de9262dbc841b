"""The inbound edge for FHIR R4: read and validate one resource or Bundle, journal it, answer.

A body that is not JSON, is nested deeper than ``MAX_JSON_DEPTH`` or is not a FHIR resource is
unreadable (400); one that ``fhir.resources`` refuses is refused with one issue per element,
never its value (422); one over ``max_message_bytes`` is over-size (413). Each is answered with
an OperationOutcome and kept in ``pl:rejected`` with the first issue as its reason, as refused
HL7 v2 is. A valid resource is journalled in its patient's partition (the key its mapping will
give it, ``partition_key``) and answered 202, or 503 when the journal cannot accept it.

Dedupe is per adapter, by the SHA-256 of the resource's canonical JSON (``content_digest``): a
new version of a resource (same id, changed content or ``meta.versionId``) is a new message, and
only an identical re-post gets the first answer and is not journalled again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from broker import keys
from broker.adapters.spec import AdapterSpec
from broker.dispatch import DRAIN_INBOUND, AsyncKicker
from broker.envelope import new_id
from broker.errors import JournalError, MessageError
from broker.identity import unidentified_key
from broker.intake.journal import Journal, content_digest
from broker.intake.outcome import Outcome, Verdict
from broker.log import get_logger

if TYPE_CHECKING:
    from broker.mapping import MappingSet

__all__ = [
    "ACCEPTED_TEXT",
    "FHIR_MEDIA_TYPE",
    "HTTP_STATUS",
    "MAX_BUNDLE_ENTRIES",
    "MAX_JSON_DEPTH",
    "FHIRIntake",
    "partition_key",
]

log = get_logger(__name__)

FHIR_MEDIA_TYPE = "application/fhir+json"
MAX_JSON_DEPTH = 100
"""Deepest nesting of objects and arrays a FHIR body may have. Real resources and Bundles stay
under 20; validating one nested about 250 deep exhausts Python's recursion limit, so deeper
input is refused before validation with a 400 rather than failing inside it."""
MAX_BUNDLE_ENTRIES = 1000
"""Default of ``Settings.fhir_max_entries``: validating a Bundle costs ~0.2 ms per entry, so a
100,000-entry one held the API for 19 s."""
INLINE_BYTES = 256 * 1024
"""Bodies up to this size are read on the event loop; larger ones in a thread, so the loop
gets the GIL back between the validator's steps."""
ACCEPTED_TEXT = "accepted; the message is journalled and will be mapped with mappings/fhir/"

HTTP_STATUS: dict[Verdict, HTTPStatus] = {
    Verdict.ACCEPTED: HTTPStatus.ACCEPTED,
    Verdict.DUPLICATE: HTTPStatus.ACCEPTED,
    Verdict.UNREADABLE: HTTPStatus.BAD_REQUEST,
    Verdict.REFUSED: HTTPStatus.UNPROCESSABLE_ENTITY,
    Verdict.OVERSIZE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Verdict.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
}
"""The FHIR RESTful answer to each verdict; a refusal's reason in ``pl:rejected`` names it."""

_ISSUE_TYPES = {"missing": "required", "extra_forbidden": "structure"}


def partition_key(
    data: dict[str, Any], adapter: AdapterSpec, mappings: MappingSet, envelope_id: str
) -> str:
    """The patient identity that orders a FHIR message (``broker.identity``).

    The key the worker's mapping gives the message (``Envelope.partition_key``, the FHIR
    mapping's ``patient_key``): one patient's messages from an adapter share a journal
    partition however the sender spells the identifier system, and a lone Observation goes
    with its patient. Input the worker will refuse (no supported resource, no FHIR mapping) is
    ordered on its own (its envelope id), so it waits for nobody.
    """
    return _patient_key(data, adapter, mappings) or unidentified_key(adapter.id, envelope_id)


def _patient_key(data: dict[str, Any], adapter: AdapterSpec, mappings: MappingSet) -> str | None:
    if mappings.fhir is None:
        return None
    try:
        return mappings.fhir.patient_key(data, adapter.id, adapter.identifier_systems)
    except MessageError:
        return None
    except Exception as exc:
        # A bug here must not refuse a valid message: it is journalled and ordered on its own.
        log.error("inbound.patient_key_failed", adapter=adapter.id, error=type(exc).__name__)
        return None


@dataclass(frozen=True, slots=True)
class _Refusal:
    """Why a body is refused: its verdict and the OperationOutcome issues."""

    verdict: Verdict
    issues: list[dict[str, Any]]


def _issue(
    diagnostics: str, issue_type: str = "structure", expression: str | None = None
) -> list[dict[str, Any]]:
    issue: dict[str, Any] = {"severity": "error", "code": issue_type, "diagnostics": diagnostics}
    if expression is not None:
        issue["expression"] = [expression]
    return [issue]


def _operation_outcome(issues: list[dict[str, Any]]) -> bytes:
    """An OperationOutcome holding ``issues``, as JSON bytes (the body of every answer)."""
    return json.dumps({"resourceType": "OperationOutcome", "issue": issues}).encode()


def _accepted(envelope_id: str) -> bytes:
    """The 202 answer of a journalled resource, naming its envelope id (the first one's for a
    duplicate, so a re-post is answered byte for byte as the first post was)."""
    return _operation_outcome(
        [
            {
                "severity": "information",
                "code": "informational",
                "diagnostics": f"{ACCEPTED_TEXT} (envelope {envelope_id})",
            }
        ]
    )


@lru_cache(maxsize=64)
def _model(resource_type: str) -> type[BaseModel] | None:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model: type[BaseModel] = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
    return model


def _path(resource_type: str, loc: tuple[int | str, ...]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ".class" if part == "class_fhir" else f".{part}"
    return out


def _validation_issues(resource_type: str, exc: ValidationError) -> list[dict[str, Any]]:
    """One issue per pydantic error, naming the element (expression), never its value."""
    issues = []
    for error in exc.errors(include_url=False):
        where = _path(resource_type, tuple(error["loc"]))
        text = str(error["msg"]).removeprefix("Value error, ")
        value = error.get("input")
        # Custom validators may quote what they were given; such a message is not repeated.
        if isinstance(value, str | int | float) and str(value) and str(value) in text:
            text = "the value is not valid here"
        issues.append(
            {
                "severity": "error",
                "code": _ISSUE_TYPES.get(str(error["type"]), "value"),
                "diagnostics": f"{where}: {text}",
                "expression": [where],
            }
        )
    return issues


def _depth_over(data: Any, limit: int) -> bool:
    """Tell whether objects and arrays nest deeper than ``limit`` (without recursing)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _read(payload: bytes, max_entries: int = MAX_BUNDLE_ENTRIES) -> dict[str, Any] | _Refusal:
    """The parsed, valid FHIR R4 resource, or why it is refused.

    UNREADABLE: not JSON, nested too deep, not a resource; OVERSIZE: a Bundle of more than
    ``max_entries`` entries (counted before validation, the costly part); REFUSED: not valid
    FHIR R4.
    """
    unreadable = Verdict.UNREADABLE
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        msg = f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        return _Refusal(unreadable, _issue(msg))
    except UnicodeDecodeError as exc:
        msg = f"the body is not UTF-8 text (byte {exc.start})"
        return _Refusal(unreadable, _issue(msg))
    except RecursionError:
        msg = f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels"
        return _Refusal(unreadable, _issue(msg))
    if isinstance(data, dict | list) and _depth_over(data, MAX_JSON_DEPTH):
        msg = f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels"
        return _Refusal(unreadable, _issue(msg))
    resource_type = data.get("resourceType") if isinstance(data, dict) else None
    if not isinstance(resource_type, str) or not resource_type:
        msg = "the JSON is not a FHIR resource: it has no resourceType"
        return _Refusal(unreadable, _issue(msg, expression="resourceType"))
    entries = data.get("entry") if resource_type == "Bundle" else None
    if isinstance(entries, list) and len(entries) > max_entries:
        msg = (
            f"the Bundle has {len(entries)} entries, over the limit of {max_entries} "
            "(PASSERELLE_FHIR_MAX_ENTRIES); send it in smaller Bundles"
        )
        return _Refusal(Verdict.OVERSIZE, _issue(msg, "too-costly", "Bundle.entry"))
    model = _model(resource_type)
    if model is None:
        msg = "resourceType is not a FHIR R4 resource type"
        return _Refusal(unreadable, _issue(msg, expression="resourceType"))
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return _Refusal(Verdict.REFUSED, _validation_issues(resource_type, exc))
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        # RecursionError: a safety net below MAX_JSON_DEPTH (checked above) on a smaller stack.
        msg = f"{resource_type} could not be validated as FHIR R4 ({type(exc).__name__})"
        return _Refusal(Verdict.REFUSED, _issue(msg, "invalid"))
    assert isinstance(data, dict)
    return data


class FHIRIntake:
    """Turns one FHIR R4 resource or Bundle into an answer, journalling it first when valid.

    ``receive`` takes a body the transport read whole, ``oversize`` the first bytes of one over
    the size limit; both return the ``Outcome`` (an OperationOutcome, or the first answer to a
    duplicate) the transport answers with, its status in ``HTTP_STATUS``.

    Args:
        adapter: the inbound registration (id, ``identifier_systems``).
        journal: where raw messages and refused input go.
        mappings: the mappings serving now (the partition key comes from ``mappings/fhir/``).
        partitions: number of patient partitions.
        kicker: queues the drain task of the partition that received a message.
        max_entries: a Bundle with more entries is refused (413) before it is validated.
    """

    def __init__(
        self,
        adapter: AdapterSpec,
        journal: Journal,
        mappings: Callable[[], MappingSet],
        partitions: int,
        kicker: AsyncKicker,
        *,
        max_entries: int = MAX_BUNDLE_ENTRIES,
    ) -> None:
        self.max_entries = max_entries
        self.adapter = adapter
        self.journal = journal
        self.mappings = mappings
        self.partitions = partitions
        self.kicker = kicker

    async def receive(self, payload: bytes, peer: str) -> Outcome:
        """Handle one body from ``peer``: journal it when it is valid FHIR R4, else refuse it."""
        if len(payload) <= INLINE_BYTES:
            read = _read(payload, self.max_entries)
        else:
            read = await asyncio.to_thread(_read, payload, self.max_entries)
        if isinstance(read, _Refusal):
            return await self._refuse(payload, peer, read)
        return await self._journal(payload, read, peer)

    async def oversize(
        self, payload: bytes, peer: str, *, size: int, sha256: str | None
    ) -> Outcome:
        """Refuse a body over the size limit (413); keep its first bytes, size and SHA-256.

        Args:
            payload: its first bytes, as many as the limit allows (the limit is their length).
            peer: who sent it.
            size: the whole body's size in bytes.
            sha256: the hex SHA-256 of the whole body.
        """
        msg = f"the body is {size} bytes, over the limit of {len(payload)} bytes"
        refusal = _Refusal(Verdict.OVERSIZE, _issue(msg, "too-costly"))
        return await self._refuse(payload, peer, refusal, size=size, sha256=sha256)

    async def _refuse(
        self,
        payload: bytes,
        peer: str,
        refusal: _Refusal,
        *,
        size: int | None = None,
        sha256: str | None = None,
    ) -> Outcome:
        """Keep a refused body with the first issue's diagnostics; a Redis failure is only logged.

        The sender already holds the refusal (4xx) and keeps the message; nothing is
        acknowledged, so a body that cannot be kept is still refused, not answered 503.
        """
        status = HTTP_STATUS[refusal.verdict]
        issues = refusal.issues
        first = issues[0] if issues else {}
        reason = f"HTTP {int(status)}: {first.get('diagnostics', '')}"
        if len(issues) > 1:
            reason += f" (and {len(issues) - 1} more issues)"
        answer = _operation_outcome(issues)
        try:
            await self.journal.reject(
                self.adapter.id,
                payload,
                reason,
                peer,
                size=size,
                sha256=sha256,
                ack=answer,
                code=str(int(status)),
            )
        except JournalError as exc:
            log.error("message.reject_unkept", adapter=self.adapter.id, error=str(exc))
        log.info("message.refused", adapter=self.adapter.id, status=int(status))
        return Outcome(refusal.verdict, answer)

    async def _journal(self, payload: bytes, data: dict[str, Any], peer: str) -> Outcome:
        """Journal a valid resource in its patient's partition and queue the drain."""
        resource_type = str(data["resourceType"])
        envelope_id = new_id()
        accepted = _accepted(envelope_id)
        key = partition_key(data, self.adapter, self.mappings(), envelope_id)
        partition = keys.partition_of(key, self.partitions)
        fields = {
            "id": envelope_id,
            "source": self.adapter.id,
            "content_type": FHIR_MEDIA_TYPE,
            "received_at": datetime.now(UTC).isoformat(),
            "charset": "utf-8",
            "raw": payload,
            "peer": peer,
            "ack": accepted,  # what the sender is answered, for the message store
        }
        try:
            result = await self.journal.append(partition, fields, dedupe=content_digest(data))
        except JournalError as exc:
            log.error("message.journal_unavailable", adapter=self.adapter.id, error=str(exc))
            return Outcome(Verdict.UNAVAILABLE, _operation_outcome(_issue(str(exc), "transient")))
        if result.duplicate:
            log.info(
                "message.duplicate",
                envelope_id=result.duplicate_of,
                adapter=self.adapter.id,
                resource_type=resource_type,
            )
            # The first answer again, naming the first envelope id (a record from before the
            # upgrade kept that answer itself).
            first = _accepted(result.duplicate_of) if result.duplicate_of else result.legacy_reply
            return Outcome(Verdict.DUPLICATE, first)
        if result.kick:
            # Journalled and flagged: the answer does not wait for Celery's publish (a failed
            # one is logged, and the periodic re-kick queues the drain within its period).
            self.kicker.dispatch_soon(DRAIN_INBOUND, [partition])
        log.info(
            "message.received",
            envelope_id=envelope_id,
            adapter=self.adapter.id,
            resource_type=resource_type,
            partition=partition,
        )
        return Outcome(Verdict.ACCEPTED, accepted)
