"""Inbound over HTTP: a hospital system posts one HL7 v2 message or one FHIR resource per request.

``POST /inbound/{adapter_id}/hl7v2`` takes the ER7 text of one message and runs it through the
same ``HL7v2Intake`` as an MLLP frame (journal first, then ACK); the ACK is the response body.
``POST /inbound/{adapter_id}/fhir`` takes one FHIR R4 resource or Bundle and runs it through the
``FHIRIntake`` (validate, journal). Both need a token with ``inbound.post`` (a sending
system's ``sender`` token, which may post only as its own adapter: 403 otherwise; or an admin's)
and an enabled inbound adapter with ``transport: http`` (and the matching ``format``). The routes only read the body
(up to ``max_message_bytes``), call the intake and write its ``Outcome`` as the response. An
adapter with ``allow_from`` answers 403, before the body is read, to a client from elsewhere.

Status codes: 200 with the ACK (AA, or AE/AR for a reason in the message); 202 for an accepted
FHIR resource; 400/422 with an OperationOutcome for FHIR that cannot be read, is nested deeper
than ``MAX_JSON_DEPTH`` or is not valid (the body is kept in ``pl:rejected``, as refused HL7 v2
is); 413 above ``max_message_bytes`` (its first bytes are kept, with its size and SHA-256) or for a
Bundle of more than ``fhir_max_entries`` entries; 503
with ``Retry-After`` when the journal cannot accept the message (Redis down or backpressure):
the sender keeps it and resends, nothing is acknowledged that could be lost.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Annotated

import redis.asyncio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request, status
from fastapi.responses import Response

from broker import keys
from broker.access import Principal
from broker.adapters.spec import AdapterSpec
from broker.api.auth import Caller, require
from broker.config import Config
from broker.dispatch import AsyncKicker
from broker.intake import offload
from broker.intake.fhir import FHIR_MEDIA_TYPE, HTTP_STATUS, FHIRIntake
from broker.intake.hl7v2 import HL7v2Intake
from broker.intake.journal import Journal
from broker.intake.outcome import Outcome, Verdict
from broker.log import get_logger
from broker.settings import Settings

__all__ = [
    "HL7V2_MEDIA_TYPE",
    "RETRY_AFTER_S",
    "InboundEdge",
    "close_inbound",
    "open_inbound",
    "router",
]

log = get_logger(__name__)

HL7V2_MEDIA_TYPE = "x-application/hl7-v2+er7"
RETRY_AFTER_S = 5
"""Seconds a sender is asked to wait when the journal cannot accept a message."""

router = APIRouter(
    prefix="/inbound", tags=["inbound"], dependencies=[Depends(require("inbound.post"))]
)

Intake = HL7v2Intake | FHIRIntake


@dataclass
class InboundEdge:
    """What the HTTP inbound routes need, built once by the application lifespan.

    Attributes:
        adapters: enabled inbound ``transport: http`` adapters by id.
        intakes: one intake per adapter, by its ``format``.
        client: the asyncio Redis client the journal uses (closed on shutdown).
        kicker: queues the drains the intakes kick (settled on shutdown).
        problem: why the edge cannot serve (registrations or mappings failed to load).
    """

    adapters: dict[str, AdapterSpec] = field(default_factory=dict)
    intakes: dict[str, Intake] = field(default_factory=dict)
    client: redis.asyncio.Redis | None = None
    kicker: AsyncKicker | None = None
    problem: str | None = None


async def open_inbound(app: FastAPI, config: Config | str) -> None:
    """Build the edge of the http inbound adapters (lifespan start).

    Args:
        app: the application; the edge is ``app.state.inbound``.
        config: the API's loaded configuration, or why it could not be loaded: the API still
            starts, and the inbound routes answer 503 naming the problem.

    The Celery app that receives kicks is ``app.state.inbound_celery`` when set (tests), else
    ``create_celery(settings)``.
    """
    settings: Settings = app.state.settings
    edge = InboundEdge()
    app.state.inbound = edge
    if isinstance(config, str):
        edge.problem = config
        return
    edge.adapters = {a.id: a for a in config.inbound("http")}
    if not edge.adapters:
        return
    edge.client = redis.asyncio.Redis.from_url(
        settings.effective_redis_url, socket_timeout=5, socket_connect_timeout=2
    )
    journal = Journal(
        edge.client, settings.dedupe_window_s, rejected_head_bytes=settings.rejected_head_bytes
    )
    celery = getattr(app.state, "inbound_celery", None)
    if celery is None:
        from broker.worker.celery_app import create_celery

        celery = create_celery(settings)
    kicker = edge.kicker = AsyncKicker(celery, edge.client)
    config.watch()  # reloads off the event loop that answers requests
    offload.configure(settings.parse_processes)
    for adapter in edge.adapters.values():
        if adapter.format == "hl7v2":
            edge.intakes[adapter.id] = HL7v2Intake(
                adapter, journal, config.supports, settings.partitions, kicker
            )
        else:
            edge.intakes[adapter.id] = FHIRIntake(
                adapter,
                journal,
                config.watcher.current,
                settings.partitions,
                kicker,
                max_entries=settings.fhir_max_entries,
            )
    log.info("inbound.http_ready", adapters=sorted(edge.adapters))


async def close_inbound(app: FastAPI) -> None:
    """Let the last kicks' publishes finish, close the edge's Redis client (lifespan end)."""
    edge: InboundEdge | None = getattr(app.state, "inbound", None)
    if edge is not None and edge.kicker is not None:
        await edge.kicker.settle()  # the drains the last messages kicked are queued
    if edge is not None and edge.client is not None:
        await edge.client.aclose()
    offload.shutdown()


def _as_itself(caller: Principal, adapter_id: str) -> None:
    """403 unless the caller may post as ``adapter_id``: a sender only as its own adapter."""
    if caller.adapter is not None and caller.adapter != adapter_id:
        log.warning("inbound.wrong_sender", adapter=adapter_id, token_id=caller.credential)
        msg = f"this token may post only as adapter {caller.adapter!r}, not {adapter_id!r}"
        raise HTTPException(status.HTTP_403_FORBIDDEN, msg)


async def _intake(request: Request, adapter_id: str, fmt: str) -> Intake:
    """The intake of the http inbound adapter ``adapter_id`` of format ``fmt``, or an HTTP error."""
    edge: InboundEdge | None = getattr(request.app.state, "inbound", None)
    if edge is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the inbound edge is not running")
    adapter = edge.adapters.get(adapter_id)
    if adapter is None or adapter.format != fmt:
        if edge.problem is not None:  # the configuration did not load
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, edge.problem)
        msg = f"no enabled inbound http adapter {adapter_id!r} for {fmt}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, msg)
    if adapter.allow_from is not None:
        host = request.client.host if request.client else ""
        if not adapter.admits(host):
            log.warning("inbound.refused_peer", adapter=adapter.id, peer=_peer(request))
            await _count_refused(edge, adapter.id)
            msg = f"adapter {adapter.id!r} does not accept messages from this address"
            raise HTTPException(status.HTTP_403_FORBIDDEN, msg)
    return edge.intakes[adapter.id]


async def _count_refused(edge: InboundEdge, adapter_id: str) -> None:
    """Count a post refused by ``allow_from`` (``/metrics``); Redis away only loses the count."""
    if edge.client is None:
        return
    field = f"{keys.CONNECTION_REFUSED}not_allowed"
    try:
        await edge.client.hincrby(keys.adapter_stats(adapter_id), field, 1)
    except redis.RedisError as exc:
        log.warning("inbound.count_failed", error=type(exc).__name__)


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


async def _receive(intake: Intake, request: Request) -> tuple[Outcome, bool]:
    """Read the body and hand it to ``intake``: its outcome, and whether the body was whole."""
    settings: Settings = request.app.state.settings
    body = await _read(request, settings.max_message_bytes)
    if body.complete:
        return await intake.receive(body.data, _peer(request)), True
    outcome = await intake.oversize(body.data, _peer(request), size=body.size, sha256=body.sha256)
    return outcome, False


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
        403: {
            "description": "A sender's token posting as another adapter, or the client's "
            "address is not in the adapter's allow_from"
        },
        404: {"description": "No enabled inbound http adapter of format hl7v2 with this id"},
        413: {"description": "Larger than max_message_bytes; the body is an AR ACK"},
        503: {"description": "The journal cannot accept it; resend after Retry-After seconds"},
    },
)
async def post_hl7v2(adapter_id: AdapterId, request: Request, caller: Caller) -> Response:
    """Take one HL7 v2 message (ER7 text, any Content-Type); answer its ACK once journalled."""
    _as_itself(caller, adapter_id)
    outcome, whole = await _receive(await _intake(request, adapter_id, "hl7v2"), request)
    if outcome.reply is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    code = status.HTTP_200_OK if whole else status.HTTP_413_CONTENT_TOO_LARGE
    headers: dict[str, str] = {}
    if whole and outcome.verdict is Verdict.UNAVAILABLE:
        code = status.HTTP_503_SERVICE_UNAVAILABLE
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return Response(outcome.reply, status_code=code, media_type=HL7V2_MEDIA_TYPE, headers=headers)


@router.post(
    "/{adapter_id}/fhir",
    response_class=Response,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        202: {"description": "Journalled; an OperationOutcome of severity information"},
        400: {"description": "Not JSON, or not a FHIR resource (OperationOutcome)"},
        403: {
            "description": "A sender's token posting as another adapter, or the client's "
            "address is not in the adapter's allow_from"
        },
        404: {"description": "No enabled inbound http adapter of format fhir with this id"},
        413: {
            "description": "Larger than max_message_bytes, or a Bundle of more than "
            "fhir_max_entries entries (OperationOutcome)"
        },
        422: {"description": "Not valid FHIR R4: one issue per element (OperationOutcome)"},
        503: {"description": "The journal cannot accept it; resend after Retry-After seconds"},
    },
)
async def post_fhir(adapter_id: AdapterId, request: Request, caller: Caller) -> Response:
    """Take one FHIR R4 resource or Bundle (application/fhir+json); journal it once valid.

    A body that is refused (400, 413, 422) is kept in ``pl:rejected`` with the first reason,
    as refused HL7 v2 is (``GET /api/rejected``): the sender gets the OperationOutcome, the
    operators see what was refused.
    """
    _as_itself(caller, adapter_id)
    outcome, _ = await _receive(await _intake(request, adapter_id, "fhir"), request)
    headers: dict[str, str] = {}
    if outcome.verdict is Verdict.UNAVAILABLE:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return Response(
        outcome.reply,
        status_code=HTTP_STATUS[outcome.verdict],
        media_type=FHIR_MEDIA_TYPE,
        headers=headers,
    )
