"""Operations routes: liveness, readiness, Prometheus metrics and queue depths."""

from __future__ import annotations

from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from broker.api.auth import public, require
from broker.config import Config as BrokerConfig
from broker.ops import backlog
from broker.ops import metrics as prometheus
from broker.ops.health import readiness
from broker.ops.overview import api_address, mapping_refs
from broker.ops.overview import overview as read_overview
from broker.ops.processes import WorkerPing, listener_up
from broker.settings import Settings

__all__ = ["get_redis", "router"]

router = APIRouter()


def get_redis(request: Request) -> redis.Redis:
    """FastAPI dependency: the application's Redis client."""
    client: redis.Redis = request.app.state.redis
    return client


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Client = Annotated[redis.Redis, Depends(get_redis)]
Config = Annotated[Settings, Depends(_settings)]


@router.get("/healthz", tags=["ops"], dependencies=[Depends(public)])
def healthz() -> dict[str, str]:
    """Liveness: the process answers HTTP. Checks nothing else, so it never flaps on Redis."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["ops"],
    dependencies=[Depends(public)],
    responses={503: {"description": "Redis is unreachable"}},
)
def readyz(client: Client) -> JSONResponse:
    """Readiness: Redis answers PING; 503 otherwise."""
    result = readiness(client)
    body = {
        "status": "ready" if result.ready else "unavailable",
        "checks": result.checks,
        "redis_latency_ms": result.redis_latency_ms,
    }
    return JSONResponse(body, status_code=200 if result.ready else 503)


@router.get(
    "/metrics",
    tags=["ops"],
    dependencies=[Depends(require("overview.read"))],
    response_class=PlainTextResponse,
)
def metrics(request: Request, client: Client, settings: Config) -> PlainTextResponse:
    """Prometheus text: per adapter and subscriber counters, backlogs, ages, latency histogram,
    open dead letters, listeners up; stream lengths, group lag/pending/age and flows."""
    config: BrokerConfig | None = request.app.state.config
    addresses = [] if config is None else [(a.id, *a.host_port) for a in config.inbound("mllp")]

    def probe() -> list[dict[str, Any]]:
        return [
            {"adapter": a, "accepting": listener_up(client, a, host, port)}
            for a, host, port in addresses
        ]

    text = prometheus.prometheus_text(client, settings, listeners=probe)
    return PlainTextResponse(text, media_type=prometheus.CONTENT_TYPE)


@router.get("/api/queues", tags=["ops"], dependencies=[Depends(require("overview.read"))])
def queues(client: Client, settings: Config) -> dict[str, Any]:
    """Per journal partition and per subscriber: depth, pending, age of oldest, counters; the
    pipeline's and each subscriber's flow (offered, sustained, growth, time to backpressure)."""
    return backlog.queues(client, settings)


@router.get("/api/overview", tags=["ops"], dependencies=[Depends(require("overview.read"))])
def overview(request: Request, client: Client, settings: Config) -> dict[str, Any]:
    """What the console's overview and ``passerelle status`` show: per inbound adapter
    received, refused per ACK code, last message and listener; per subscriber backlog (parked
    included), open dead letters, retrying partitions and the next retry, oldest waiting
    message; Redis, the workers, the pipeline, backpressure and the mappings in force."""
    config: BrokerConfig | None = request.app.state.config
    workers = _worker_ping(request, settings)
    if config is None:
        return read_overview(client, settings, workers=workers, api=api_address(settings))
    return read_overview(
        client,
        settings,
        adapters=list(config.adapters.values()),
        mappings=mapping_refs(config.mappings),
        rejected_reload=config.watcher.rejected,
        workers=workers,
        api=api_address(settings),
    )


def _worker_ping(request: Request, settings: Settings) -> WorkerPing:
    """The application's worker ping (one Celery client, answers reused for a few seconds)."""
    ping: WorkerPing | None = getattr(request.app.state, "worker_ping", None)
    if ping is None:
        from broker.worker.celery_app import create_celery

        celery = create_celery(settings)
        ping = WorkerPing(lambda: celery.control.ping(timeout=1.0))
        request.app.state.worker_ping = ping
    return ping
