"""Inbound over HTTP: a hospital system posts one HL7 v2 message or one FHIR resource per request.

``POST /inbound/{adapter_id}/hl7v2`` takes the ER7 text of one message and runs it through the
same ``HL7v2Intake`` as an MLLP frame (journal first, then ACK); the ACK is the response body.
``POST /inbound/{adapter_id}/fhir`` takes one FHIR R4 resource or Bundle, validates it and
journals it. Both need the API bearer token and an enabled inbound adapter with
``transport: http`` (and the matching ``format``).

Status codes: 200 with the ACK (AA, or AE/AR for a reason in the message); 202 for an accepted
FHIR resource; 400/422 with an OperationOutcome for FHIR that cannot be read, is nested deeper
than ``MAX_JSON_DEPTH`` or is not valid (the body is kept in ``pl:rejected``, as refused HL7 v2
is); 413 above ``max_message_bytes`` (its first bytes are kept, with its size and SHA-256); 503
with ``Retry-After`` when the journal cannot accept the message (Redis down or backpressure):
the sender keeps it and resends, nothing is acknowledged that could be lost.

Dedupe is per adapter: HL7 v2 by MSH-3, MSH-4 and MSH-10 (as over MLLP); FHIR by the SHA-256
of the resource's canonical JSON, so a new version of a resource (same id, changed content or
``meta.versionId``) is a new message, and only an identical re-post is answered with the first
202 and not journalled again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

import redis.asyncio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request, status
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from broker import keys
from broker.adapters.mllp import Frame
from broker.adapters.spec import AdapterSpec, load_adapters
from broker.api.auth import require_token
from broker.dispatch import DRAIN_INBOUND, AsyncKicker
from broker.envelope import new_id
from broker.errors import BrokerError, JournalError, MappingSpecError, MessageError
from broker.identity import IdentifierSystem, unidentified_key
from broker.intake.hl7v2 import HL7v2Intake
from broker.intake.journal import AppendResult, Journal, content_digest
from broker.log import get_logger
from broker.settings import Settings

if TYPE_CHECKING:
    from broker.mapping import MappingSet

__all__ = [
    "FHIR_MEDIA_TYPE",
    "HL7V2_MEDIA_TYPE",
    "MAX_JSON_DEPTH",
    "RETRY_AFTER_S",
    "InboundEdge",
    "close_inbound",
    "open_inbound",
    "router",
]

log = get_logger(__name__)

HL7V2_MEDIA_TYPE = "x-application/hl7-v2+er7"
FHIR_MEDIA_TYPE = "application/fhir+json"
RETRY_AFTER_S = 5
"""Seconds a sender is asked to wait when the journal cannot accept a message."""
MAX_JSON_DEPTH = 100
"""Deepest nesting of objects and arrays a FHIR body may have. Real resources and Bundles stay
under 20; validating one nested about 250 deep exhausts Python's recursion limit, so deeper
input is refused before validation with a 400 rather than failing inside it."""
ACCEPTED_TEXT = "accepted; the message is journalled and will be mapped with mappings/fhir/"

# Set by the journal wrapper when Redis refused or backpressure is on, read by the route that
# awaited the intake (a coroutine awaited directly shares its caller's context).
_journal_refused: ContextVar[bool] = ContextVar("_journal_refused", default=False)

router = APIRouter(prefix="/inbound", tags=["inbound"], dependencies=[Depends(require_token)])


class _WatchedJournal(Journal):
    """A Journal that notes, for the current request, that it could not accept a message."""

    async def append(
        self, partition: int, fields: dict[str, Any], *, dedupe: str | None, ack: bytes
    ) -> AppendResult:
        try:
            return await super().append(partition, fields, dedupe=dedupe, ack=ack)
        except JournalError:
            _journal_refused.set(True)
            raise

    async def reject(
        self,
        source: str,
        raw: bytes,
        reason: str,
        peer: str,
        *,
        size: int | None = None,
        sha256: str | None = None,
    ) -> None:
        try:
            await super().reject(source, raw, reason, peer, size=size, sha256=sha256)
        except JournalError:
            _journal_refused.set(True)
            raise


@dataclass
class InboundEdge:
    """What the HTTP inbound routes need, built once by the application lifespan.

    Attributes:
        adapters: enabled inbound ``transport: http`` adapters by id.
        intakes: one HL7v2Intake per ``format: hl7v2`` adapter.
        journal: shared by every adapter (``None`` when there is no http adapter).
        kicker: queues drain tasks.
        client: the asyncio Redis client the journal uses (closed on shutdown).
        mappings: the current MappingSet (hot-reloaded); the FHIR route takes its partition
            key from ``mappings/fhir/`` (``None`` until loaded).
        problem: why the edge cannot serve (registrations or mappings failed to load).
    """

    adapters: dict[str, AdapterSpec] = field(default_factory=dict)
    intakes: dict[str, HL7v2Intake] = field(default_factory=dict)
    journal: Journal | None = None
    kicker: AsyncKicker | None = None
    client: redis.asyncio.Redis | None = None
    mappings: Callable[[], MappingSet] | None = None
    problem: str | None = None


async def open_inbound(app: FastAPI) -> None:
    """Build the edge of the http inbound adapters (lifespan start).

    The Celery app that receives kicks is ``app.state.inbound_celery`` when set (tests), else
    ``create_celery(settings)``. A registration or mapping that fails to load does not stop the
    API: the inbound routes answer 503 naming the problem.
    """
    settings: Settings = app.state.settings
    edge = InboundEdge()
    app.state.inbound = edge
    try:
        adapters = load_adapters(settings.adapters_dir)
    except BrokerError as exc:
        edge.problem = f"adapter registrations cannot be loaded: {exc}".splitlines()[0]
        log.error("inbound.adapters_unavailable", error=edge.problem)
        return
    edge.adapters = {
        a.id: a
        for a in adapters
        if a.direction == "inbound" and a.transport == "http" and a.enabled
    }
    if not edge.adapters:
        return
    edge.client = redis.asyncio.Redis.from_url(
        settings.effective_redis_url, socket_timeout=5, socket_connect_timeout=2
    )
    edge.journal = _WatchedJournal(
        edge.client, settings.dedupe_window_s, rejected_head_bytes=settings.rejected_head_bytes
    )
    celery = getattr(app.state, "inbound_celery", None)
    if celery is None:
        from broker.worker.celery_app import create_celery

        celery = create_celery(settings)
    edge.kicker = AsyncKicker(celery, edge.client)
    from broker.mapping import MappingSet
    from broker.mapping.reload import MappingWatcher

    try:
        watcher = MappingWatcher(settings.mapping_roots, MappingSet.load(settings.mapping_roots))
    except (MappingSpecError, OSError) as exc:
        edge.problem = f"mappings cannot be loaded: {exc}".splitlines()[0]
        log.error("inbound.mappings_unavailable", error=edge.problem)
        return
    watcher.start()  # reloads off the event loop that answers requests
    edge.mappings = watcher.current

    def supports(event: str, version: str, adapter: str) -> bool:
        return watcher.current().supports(event, version, adapter)

    for adapter in edge.adapters.values():
        if adapter.format == "hl7v2":
            edge.intakes[adapter.id] = HL7v2Intake(
                adapter, edge.journal, supports, settings.partitions, edge.kicker
            )
    log.info("inbound.http_ready", adapters=sorted(edge.adapters))


async def close_inbound(app: FastAPI) -> None:
    """Close the edge's Redis client (lifespan end)."""
    edge: InboundEdge | None = getattr(app.state, "inbound", None)
    if edge is not None and edge.client is not None:
        await edge.client.aclose()


def _adapter(request: Request, adapter_id: str, fmt: str) -> tuple[InboundEdge, AdapterSpec]:
    """The edge and the http inbound adapter ``adapter_id`` of format ``fmt``, or an HTTP error."""
    edge: InboundEdge | None = getattr(request.app.state, "inbound", None)
    if edge is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the inbound edge is not running")
    adapter = edge.adapters.get(adapter_id)
    if adapter is None or adapter.format != fmt:
        if edge.problem is not None and not edge.adapters:  # registrations did not load
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, edge.problem)
        msg = f"no enabled inbound http adapter {adapter_id!r} for {fmt}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, msg)
    return edge, adapter


@dataclass(frozen=True, slots=True)
class _Body:
    """A request body read with a size limit.

    Attributes:
        data: the body, or its first ``limit`` bytes when it is larger.
        complete: the body was within the limit (``data`` is all of it).
        size: the whole body's size in bytes.
        sha256: of a body over the limit, the hex SHA-256 of all of it (else ``None``).
    """

    data: bytes
    complete: bool
    size: int
    sha256: str | None = None

    def frame(self) -> Frame:
        """The body as an over-size frame, for ``HL7v2Intake.oversize``."""
        return Frame(self.data, oversize=True, size=self.size, sha256=self.sha256)


async def _read(request: Request, limit: int) -> _Body:
    """Read the body, keeping at most ``limit`` bytes; a larger one is read to its end and hashed.

    The API is behind the bearer token, so reading an over-size body to its end (to give its
    size and digest with the refusal) serves a known sender; only the first bytes are kept.
    """
    body = bytearray()
    stream = request.stream()
    async for chunk in stream:
        body += chunk
        if len(body) > limit:
            break
    else:
        return _Body(bytes(body), complete=True, size=len(body))
    digest = hashlib.sha256(body)
    size = len(body)
    async for chunk in stream:
        digest.update(chunk)
        size += len(chunk)
    return _Body(bytes(body[:limit]), complete=False, size=size, sha256=digest.hexdigest())


def _peer(request: Request) -> str:
    return f"http:{request.client.host}:{request.client.port}" if request.client else "http"


AdapterId = Annotated[str, Path(description="The id of an inbound adapter with transport http.")]


@router.post(
    "/{adapter_id}/hl7v2",
    response_class=Response,
    responses={
        200: {
            "description": "The ACK (AA; AE or AR for a reason in the message)",
            "content": {HL7V2_MEDIA_TYPE: {}},
        },
        204: {"description": "Enhanced mode: MSH-15 asked for no commit ACK"},
        404: {"description": "No enabled inbound http adapter of format hl7v2 with this id"},
        413: {"description": "Larger than max_message_bytes; the body is an AR ACK"},
        503: {"description": "The journal cannot accept it; resend after Retry-After seconds"},
    },
)
async def post_hl7v2(adapter_id: AdapterId, request: Request) -> Response:
    """Take one HL7 v2 message (ER7 text, any Content-Type); answer its ACK once journalled."""
    edge, adapter = _adapter(request, adapter_id, "hl7v2")
    intake = edge.intakes.get(adapter.id)
    if intake is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, edge.problem or "not ready")
    settings: Settings = request.app.state.settings
    body = await _read(request, settings.max_message_bytes)
    _journal_refused.set(False)
    if body.complete:
        reply = await intake(body.data, _peer(request))
        code = status.HTTP_200_OK
    else:
        reply = await intake.oversize(body.frame(), _peer(request))
        code = status.HTTP_413_CONTENT_TOO_LARGE
    headers: dict[str, str] = {}
    if _journal_refused.get() and body.complete:
        code = status.HTTP_503_SERVICE_UNAVAILABLE
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if reply is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return Response(reply, status_code=code, media_type=HL7V2_MEDIA_TYPE, headers=headers)


def _outcome(
    code: int,
    severity: str,
    issue_type: str,
    diagnostics: str,
    expression: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    issue: dict[str, Any] = {"severity": severity, "code": issue_type, "diagnostics": diagnostics}
    if expression is not None:
        issue["expression"] = [expression]
    return _issues(code, [issue], headers)


def _issues(
    code: int, issues: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps({"resourceType": "OperationOutcome", "issue": issues}).encode()
    return Response(body, status_code=code, media_type=FHIR_MEDIA_TYPE, headers=headers)


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


_ISSUE_TYPES = {"missing": "required", "extra_forbidden": "structure"}


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


def _patient_key(
    mappings: MappingSet,
    adapter_id: str,
    data: dict[str, Any],
    adapter_rules: Sequence[IdentifierSystem] = (),
) -> str | None:
    """The partition key the worker's mapping will give the message (``Envelope.partition_key``).

    The same normalised identity (``FhirMapping.patient_key``, ``broker.identity``): one patient's messages from an
    adapter share a journal partition however the sender spells the identifier system, and a
    lone Observation goes with its patient. ``None`` for input the worker will refuse (no
    supported resource, no FHIR mapping): it waits for nobody.
    """
    if mappings.fhir is None:
        return None
    try:
        return mappings.fhir.patient_key(data, adapter_id, adapter_rules)
    except MessageError:
        return None
    except Exception as exc:
        # A bug here must not refuse a valid message: it is journalled and ordered on its own.
        log.error("inbound.patient_key_failed", adapter=adapter_id, error=type(exc).__name__)
        return None


@router.post(
    "/{adapter_id}/fhir",
    response_class=Response,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        202: {"description": "Journalled; an OperationOutcome of severity information"},
        400: {"description": "Not JSON, or not a FHIR resource (OperationOutcome)"},
        404: {"description": "No enabled inbound http adapter of format fhir with this id"},
        413: {"description": "Larger than max_message_bytes (OperationOutcome)"},
        422: {"description": "Not valid FHIR R4: one issue per element (OperationOutcome)"},
        503: {"description": "The journal cannot accept it; resend after Retry-After seconds"},
    },
)
async def post_fhir(adapter_id: AdapterId, request: Request) -> Response:
    """Take one FHIR R4 resource or Bundle (application/fhir+json); journal it once valid.

    A body that is refused (400, 413, 422) is kept in ``pl:rejected`` with the first reason,
    as refused HL7 v2 is (``GET /api/rejected``): the sender gets the OperationOutcome, the
    operators see what was refused.
    """
    edge, adapter = _adapter(request, adapter_id, "fhir")
    if edge.mappings is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, edge.problem or "not ready")
    settings: Settings = request.app.state.settings
    body = await _read(request, settings.max_message_bytes)
    reply = _check_fhir(body, settings.max_message_bytes)
    if isinstance(reply, Response):
        await _keep_refused(edge, adapter, body, reply, _peer(request))
        return reply
    return await _journal_fhir(edge, adapter, settings, body.data, reply)


async def _keep_refused(
    edge: InboundEdge, adapter: AdapterSpec, body: _Body, reply: Response, peer: str
) -> None:
    """Keep a refused body with the first issue's diagnostics; a Redis failure is only logged.

    Of an over-size body, only its first bytes are kept, with its size and SHA-256. The sender
    already holds the refusal (4xx) and keeps the message; nothing is acknowledged.
    """
    assert edge.journal is not None
    issues = json.loads(bytes(reply.body)).get("issue") or [{}]
    reason = f"HTTP {reply.status_code}: {issues[0].get('diagnostics', '')}"
    if len(issues) > 1:
        reason += f" (and {len(issues) - 1} more issues)"
    try:
        if body.complete:
            await edge.journal.reject(adapter.id, body.data, reason, peer)
        else:
            await edge.journal.reject(
                adapter.id, body.data, reason, peer, size=body.size, sha256=body.sha256
            )
    except JournalError as exc:
        log.error("message.reject_unkept", adapter=adapter.id, error=str(exc))
    log.info("message.refused", adapter=adapter.id, status=reply.status_code)


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


def _check_fhir(body: _Body, limit: int) -> Response | dict[str, Any]:
    """The parsed, valid FHIR R4 resource, or the OperationOutcome refusing it."""
    if not body.complete:
        msg = f"the body is {body.size} bytes, over the limit of {limit} bytes"
        return _outcome(status.HTTP_413_CONTENT_TOO_LARGE, "error", "too-costly", msg)
    try:
        data = json.loads(body.data)
    except json.JSONDecodeError as exc:
        msg = f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        return _outcome(status.HTTP_400_BAD_REQUEST, "error", "structure", msg)
    except UnicodeDecodeError as exc:
        msg = f"the body is not UTF-8 text (byte {exc.start})"
        return _outcome(status.HTTP_400_BAD_REQUEST, "error", "structure", msg)
    except RecursionError:
        msg = f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels"
        return _outcome(status.HTTP_400_BAD_REQUEST, "error", "structure", msg)
    if isinstance(data, dict | list) and _depth_over(data, MAX_JSON_DEPTH):
        msg = f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels"
        return _outcome(status.HTTP_400_BAD_REQUEST, "error", "structure", msg)
    resource_type = data.get("resourceType") if isinstance(data, dict) else None
    if not isinstance(resource_type, str) or not resource_type:
        msg = "the JSON is not a FHIR resource: it has no resourceType"
        return _outcome(status.HTTP_400_BAD_REQUEST, "error", "structure", msg, "resourceType")
    model = _model(resource_type)
    if model is None:
        msg = "resourceType is not a FHIR R4 resource type"
        return _outcome(status.HTTP_400_BAD_REQUEST, "error", "structure", msg, "resourceType")
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return _issues(
            status.HTTP_422_UNPROCESSABLE_CONTENT, _validation_issues(resource_type, exc)
        )
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        # RecursionError: a safety net below MAX_JSON_DEPTH (checked above) on a smaller stack.
        msg = f"{resource_type} could not be validated as FHIR R4 ({type(exc).__name__})"
        return _outcome(status.HTTP_422_UNPROCESSABLE_CONTENT, "error", "invalid", msg)
    assert isinstance(data, dict)
    return data


async def _journal_fhir(
    edge: InboundEdge, adapter: AdapterSpec, settings: Settings, body: bytes, data: dict[str, Any]
) -> Response:
    """Journal a valid resource in its patient's partition and queue the drain; 202 or 503."""
    assert edge.journal is not None
    assert edge.kicker is not None
    assert edge.mappings is not None
    resource_type = str(data["resourceType"])
    envelope_id = new_id()
    accepted = json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"{ACCEPTED_TEXT} (envelope {envelope_id})",
                }
            ],
        }
    ).encode()
    partition = keys.partition_of(
        _patient_key(edge.mappings(), adapter.id, data, adapter.identifier_systems)
        or unidentified_key(adapter.id, envelope_id),
        settings.partitions,
    )
    fields = {
        "id": envelope_id,
        "source": adapter.id,
        "content_type": FHIR_MEDIA_TYPE,
        "received_at": datetime.now(UTC).isoformat(),
        "charset": "utf-8",
        "raw": body,
    }
    try:
        result = await edge.journal.append(
            partition, fields, dedupe=content_digest(data), ack=accepted
        )
    except JournalError as exc:
        log.error("message.journal_unavailable", adapter=adapter.id, error=str(exc))
        return _outcome(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "error",
            "transient",
            str(exc),
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if result.previous_ack is not None:
        log.info("message.duplicate", adapter=adapter.id, resource_type=resource_type)
        return Response(result.previous_ack, status_code=202, media_type=FHIR_MEDIA_TYPE)
    if result.kick:
        try:
            await edge.kicker.dispatch(DRAIN_INBOUND, [partition])
        except Exception as exc:
            # Journalled and flagged: the periodic re-kick queues the drain within its period.
            log.warning("inbound.kick_failed", partition=partition, error=type(exc).__name__)
    log.info(
        "message.received",
        envelope_id=envelope_id,
        adapter=adapter.id,
        resource_type=resource_type,
        partition=partition,
    )
    return Response(accepted, status_code=status.HTTP_202_ACCEPTED, media_type=FHIR_MEDIA_TYPE)
