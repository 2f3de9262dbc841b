"""The declarations themselves: a route without a permission stops the application, and the
access events carry only allowed keys."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from broker import access_events
from broker.api.auth import public, require, require_token
from broker.errors import ConfigurationError
from broker.guard import check_routes
from broker.log import ALLOWED_KEYS, configure_logging

MOUNTS = frozenset({"/static"})
FRAMEWORK = frozenset({"/openapi.json"})


def _app(router: APIRouter) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None)
    app.include_router(router)
    return app


def test_a_route_without_a_permission_stops_the_application() -> None:
    router = APIRouter(prefix="/api/policies")

    @router.get("/{policy}")
    def show(policy: str) -> dict[str, str]:
        return {"policy": policy}

    with pytest.raises(ConfigurationError, match=r"GET /api/policies/\{policy\} declares no"):
        check_routes(_app(router), public_mounts=MOUNTS, framework=FRAMEWORK)


def test_a_route_with_two_permissions_stops_the_application() -> None:
    router = APIRouter(dependencies=[Depends(require("policy.read"))])

    @router.post("/api/consents", dependencies=[Depends(require("policy.write"))])
    def change() -> None:
        return None

    with pytest.raises(ConfigurationError, match="declares 2 permissions"):
        check_routes(_app(router), public_mounts=MOUNTS, framework=FRAMEWORK)


def test_an_unknown_permission_is_refused_where_it_is_written() -> None:
    with pytest.raises(ValueError, match=r"unknown permission 'policy\.delete'"):
        require("policy.delete")


def test_a_route_written_with_require_token_keeps_the_permission_it_names() -> None:
    """A route of another branch (``require_token`` and ``x-permission``) is honoured."""
    router = APIRouter()

    @router.get(
        "/api/audit",
        dependencies=[Depends(require_token)],
        openapi_extra={"x-permission": "audit.read"},
    )
    def audit() -> list[str]:
        return []

    @router.get("/healthz", dependencies=[Depends(public)])
    def healthz() -> dict[str, str]:
        return {}

    app = _app(router)
    table = check_routes(app, public_mounts=MOUNTS, framework=FRAMEWORK)
    assert table == {("GET", "/api/audit"): "audit.read", ("GET", "/healthz"): "public"}
    operation = app.openapi()["paths"]["/api/audit"]["get"]
    assert operation["x-permission"] == "audit.read"

    bare = APIRouter()

    @bare.get("/api/audit", dependencies=[Depends(require_token)])
    def unnamed() -> list[str]:
        return []

    with pytest.raises(ConfigurationError, match="require_token without"):
        check_routes(_app(bare), public_mounts=MOUNTS, framework=FRAMEWORK)


def test_an_undeclared_mount_stops_the_application(tmp_path) -> None:
    app = FastAPI(docs_url=None, redoc_url=None)
    app.mount("/exports", StaticFiles(directory=tmp_path), name="exports")
    with pytest.raises(ConfigurationError, match="mount /exports is not declared public"):
        check_routes(app, public_mounts=MOUNTS, framework=FRAMEWORK)


def test_access_events_log_names_and_ids_only(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", root.handlers[:])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr("sys.stderr", buffer)
    configure_logging("json", "INFO")
    try:
        access_events.record(
            "token_created", "cli:admin", user="labo-casa", token_id="0123456789ab", role="sender"
        )
    finally:
        structlog.reset_defaults()
    line = json.loads(buffer.getvalue().splitlines()[-1])
    assert line["event"] == "access.token_created"
    assert (line["who"], line["user"], line["token_id"]) == (
        "cli:admin",
        "labo-casa",
        "0123456789ab",
    )
    assert access_events.IDS | {"who"} <= ALLOWED_KEYS
    with pytest.raises(ValueError, match="unknown access event 'password_reset'"):
        access_events.record("password_reset", "x")
    with pytest.raises(ValueError, match="key 'token'"):
        access_events.record("login", "x", token="pas_secret")
