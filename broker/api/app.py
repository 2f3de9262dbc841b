"""The FastAPI application: ``create_app(settings)`` wires routes, Redis and error handling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from broker.api import dead_letters, health, inbound, messages, operations, refusals, unmapped
from broker.config import Config, load_config
from broker.errors import AdapterSpecError, BrokerError
from broker.log import get_logger
from broker.settings import Settings

__all__ = ["create_app"]

_log = get_logger(__name__)


def _load_config(settings: Settings) -> Config | str:
    """The API's configuration (``load_config``, as every role), or why it cannot be loaded.

    The API serves health and operations without it; its inbound routes answer 503 naming the
    problem (``passerelle api`` refuses to start on it before this runs).
    """
    try:
        return load_config(settings)
    except AdapterSpecError as exc:
        problem = f"adapter registrations cannot be loaded: {exc}".splitlines()[0]
        _log.error("inbound.adapters_unavailable", error=problem)
    except (BrokerError, OSError) as exc:
        problem = f"mappings cannot be loaded: {exc}".splitlines()[0]
        _log.error("inbound.mappings_unavailable", error=problem)
    return problem


def create_app(settings: Settings, *, client: redis.Redis | None = None) -> FastAPI:
    """Build the API application.

    Every route but ``/healthz`` and ``/readyz`` needs the bearer token of
    ``settings.api_token``; without one configured they answer 401 (never open).

    Args:
        settings: the process settings.
        client: a Redis client to use instead of one on ``settings.effective_redis_url``
            (tests); it is not closed on shutdown.

    Returns:
        The application; serve it with uvicorn.
    """
    own = client is None
    redis_client = (
        redis.Redis.from_url(
            settings.effective_redis_url, socket_timeout=5, socket_connect_timeout=2
        )
        if client is None
        else client
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = _load_config(settings)
        app.state.config = config if isinstance(config, Config) else None
        await inbound.open_inbound(app, config)
        yield
        await inbound.close_inbound(app)
        store = getattr(app.state, "store", None)  # opened by the first message search
        if store is not None:
            store.dispose()
        if own:
            redis_client.close()

    app = FastAPI(
        title="Passerelle",
        summary="HL7 v2 / FHIR interoperability broker: operations API.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.redis = redis_client
    app.include_router(health.router)
    app.include_router(messages.router)
    app.include_router(dead_letters.router)
    app.include_router(unmapped.router)
    app.include_router(refusals.router)
    app.include_router(operations.router)
    app.include_router(inbound.router)

    @app.exception_handler(redis.RedisError)
    async def redis_unavailable(request: Request, exc: redis.RedisError) -> JSONResponse:
        _log.warning("api.redis_error", path=request.url.path, error=exc.__class__.__name__)
        return JSONResponse({"detail": "Redis is unavailable; try again later"}, status_code=503)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace to the client; the log has the class, not the message (which may
        # quote data).
        _log.error("api.internal_error", path=request.url.path, error=exc.__class__.__name__)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    return app
