"""The FastAPI application: ``create_app(settings)`` wires routes, Redis and error handling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from broker import console
from broker.access import Authenticator
from broker.api import (
    audit,
    dead_letters,
    docs,
    health,
    inbound,
    messages,
    operations,
    policy,
    refusals,
    unmapped,
    users,
)
from broker.api.auth import LoginRequired, PageForbidden
from broker.audit import sink as audit_sink
from broker.config import Config, load_config
from broker.errors import AdapterSpecError, BrokerError, DataKeyError, SealedDataError
from broker.guard import check_routes
from broker.log import get_logger
from broker.settings import Settings

__all__ = ["FRAMEWORK_ROUTES", "PUBLIC_MOUNTS", "create_app"]

PUBLIC_MOUNTS = frozenset({"/docs/assets", "/console/static"})
"""Static files anyone may fetch: scripts, styles and icons of the docs and the console."""
FRAMEWORK_ROUTES = frozenset({"/openapi.json"})
"""FastAPI's own routes: the OpenAPI schema, public like the docs that read it."""

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

    Every route declares the permission it needs (``broker.guard``; docs/security.md, "Who may
    do what"): a bearer token (a stored one, or the bootstrap ``settings.api_token``) or a
    console session whose role holds it; without a credential 401, without the permission 403.
    Only the probes (``/healthz``, ``/readyz``), the login page, the docs and static files are
    public; a route that declares nothing stops the application from being built. The console (``/console/``, :mod:`broker.console`) and the OpenAPI docs
    (``/docs``, ``/redoc``) are served from the package, with no CDN.

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
        app.state.authenticator.close()
        if own:
            redis_client.close()

    app = FastAPI(
        title="Passerelle",
        summary="HL7 v2 / FHIR interoperability broker: operations API.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.redis = redis_client
    app.state.authenticator = Authenticator(settings)
    audit_sink.configure(redis_client)
    app.include_router(health.router)
    app.include_router(messages.router)
    app.include_router(audit.router)
    app.include_router(dead_letters.router)
    app.include_router(unmapped.router)
    app.include_router(refusals.router)
    app.include_router(operations.router)
    app.include_router(policy.router)
    app.include_router(inbound.router)
    app.include_router(users.router)
    app.include_router(docs.router)
    app.mount("/docs/assets", StaticFiles(directory=docs.ASSETS), name="docs-assets")
    app.include_router(console.public)
    app.include_router(console.pages)
    app.mount("/console/static", StaticFiles(directory=console.STATIC), name="console-static")
    check_routes(app, public_mounts=PUBLIC_MOUNTS, framework=FRAMEWORK_ROUTES)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> RedirectResponse:
        return console.login_redirect(request)

    @app.exception_handler(PageForbidden)
    async def page_forbidden(request: Request, exc: PageForbidden) -> HTMLResponse:
        return console.forbidden_page(request, exc.permission)

    @app.exception_handler(redis.RedisError)
    async def redis_unavailable(request: Request, exc: redis.RedisError) -> JSONResponse:
        _log.warning("api.redis_error", path=request.url.path, error=exc.__class__.__name__)
        return JSONResponse({"detail": "Redis is unavailable; try again later"}, status_code=503)

    @app.exception_handler(DataKeyError)
    @app.exception_handler(SealedDataError)
    async def unreadable(request: Request, exc: BrokerError) -> JSONResponse:
        # The message names the record, the field and the key id, never the content.
        _log.error("api.unreadable", path=request.url.path, error=exc.__class__.__name__)
        detail = f"stored data cannot be read: {exc}"
        return JSONResponse({"detail": detail}, status_code=500)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace to the client; the log has the class, not the message (which may
        # quote data).
        _log.error("api.internal_error", path=request.url.path, error=exc.__class__.__name__)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    return app
