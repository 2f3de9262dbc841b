"""Authorisation of every route: each declares the one permission it needs, in its own code.

An API route or router says ``dependencies=[Depends(require("messages.replay"))]``; a console
page ``Depends(require_page("messages.read"))``; what anyone may reach (``/healthz``, the login
page, the OpenAPI docs) says ``Depends(public)``. ``require`` authenticates the request (a
bearer token, or a console session whose unsafe requests carry its CSRF token), leaves the
:class:`~broker.access.Principal` in ``request.state.principal`` and its name in
``request.state.who``, then checks the permission:

- no, a bad, an expired or a revoked credential: 401 with a JSON ``detail`` saying which;
- a role without the permission: 403 whose ``detail`` names the missing permission.

:func:`check_routes` runs when the application is built: a route that declares no permission,
or two, stops it (and the role matrix test proves each declaration). It also writes each
route's permission into the OpenAPI schema (``x-permission``), so the docs show who may call
what. Routes written before this existed (``Depends(require_token)`` with
``openapi_extra={"x-permission": ...}``) are honoured the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, Mount, RouteContext, iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broker.access import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Authenticator,
    CredentialRefused,
    Principal,
    Session,
    read_session,
)
from broker.errors import ConfigurationError, ServiceUnavailable
from broker.roles import PERMISSIONS, permissions_of
from broker.settings import Settings

__all__ = [
    "ANY_ROLE",
    "NOT_CONFIGURED",
    "PERMISSION_KEY",
    "PUBLIC",
    "LoginRequired",
    "PageForbidden",
    "Requirement",
    "authenticator",
    "check_routes",
    "declared",
    "lacking",
    "principal_of",
    "public",
    "require",
    "require_page",
    "require_token",
    "routes_of",
    "session_of",
]

PERMISSION_KEY = "x-permission"
"""Where a route's permission is written in the OpenAPI schema."""
ANY_ROLE = "any role"
"""What :func:`declared` says of a route any authenticated credential may use (logout)."""
PUBLIC = "public"
"""What :func:`declared` says of a route anyone may reach."""
NOT_CONFIGURED = (
    "API authentication is not configured: set PASSERELLE_API_TOKEN (or let `passerelle serve` "
    "generate one into data_dir/api-token); every route except /healthz and /readyz needs it"
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_bearer = HTTPBearer(
    auto_error=False,
    description="A Passerelle token (`passerelle tokens create`) or the bootstrap token.",
)


class LoginRequired(Exception):
    """Raised by a page's requirement without a session: the app redirects to the login page."""


class PageForbidden(Exception):
    """Raised by a page's requirement when the session's role lacks ``permission``: the app
    answers with a 403 page naming it."""

    def __init__(self, permission: str, role: str) -> None:
        self.permission = permission
        self.role = role
        super().__init__(f"the role {role} lacks the permission {permission}")


def authenticator(request: Request) -> Authenticator:
    """The application's :class:`Authenticator`, made on first use."""
    found: Authenticator | None = getattr(request.app.state, "authenticator", None)
    if found is None:
        found = Authenticator(request.app.state.settings)
        request.app.state.authenticator = found
    return found


def session_of(request: Request) -> Session | None:
    """The console session of the request's cookie (signature and age checked), or ``None``."""
    settings: Settings = request.app.state.settings
    return read_session(settings, request.cookies.get(SESSION_COOKIE))


def principal_of(request: Request) -> Principal:
    """Who the request acts as (set by its route's requirement)."""
    principal: Principal = request.state.principal
    return principal


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers=_CHALLENGE)


def _unavailable(exc: ServiceUnavailable) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc))


def _authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The principal of a bearer token or, without one, of the console session (CSRF checked)."""
    settings: Settings = request.app.state.settings
    checker = authenticator(request)
    try:
        if credentials is None:
            session = session_of(request)
            if session is None:
                if settings.api_token is None:
                    raise _unauthorized(NOT_CONFIGURED)
                msg = "missing bearer token: send `Authorization: Bearer <token>`"
                raise _unauthorized(msg)
            principal = checker.session(session)
            if request.method not in _SAFE_METHODS and not session.csrf_matches(
                request.headers.get(CSRF_HEADER)
            ):
                msg = f"missing or wrong CSRF token: send the console's {CSRF_HEADER} header"
                raise HTTPException(status.HTTP_403_FORBIDDEN, msg)
            return principal
        if credentials.scheme.lower() != "bearer":
            raise _unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
        return checker.bearer(credentials.credentials)
    except CredentialRefused as exc:
        if settings.api_token is None and str(exc) == "invalid API token":
            raise _unauthorized(NOT_CONFIGURED) from exc
        raise _unauthorized(str(exc)) from exc
    except ServiceUnavailable as exc:
        raise _unavailable(exc) from exc


@dataclass(frozen=True, slots=True)
class Requirement:
    """The dependency :func:`require` returns: authenticate, then check ``permission``.

    Attributes:
        permission: the permission needed; ``None``: any authenticated credential.
    """

    permission: str | None

    def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        principal = _authenticate(request, credentials)
        request.state.principal = principal
        request.state.who = principal.who
        if self.permission is not None and not principal.may(self.permission):
            raise HTTPException(status.HTTP_403_FORBIDDEN, lacking(principal, self.permission))
        return principal


@dataclass(frozen=True, slots=True)
class PageRequirement:
    """The dependency :func:`require_page` returns: a console session holding ``permission``.

    Attributes:
        permission: the permission needed; ``None``: any logged-in session.
    """

    permission: str | None

    def __call__(self, request: Request) -> Principal:
        session = session_of(request)
        if session is None:
            raise LoginRequired
        try:
            principal = authenticator(request).session(session)
        except CredentialRefused as exc:
            raise LoginRequired from exc
        except ServiceUnavailable as exc:
            raise _unavailable(exc) from exc
        request.state.session = session
        request.state.principal = principal
        request.state.who = principal.who
        if self.permission is not None and not principal.may(self.permission):
            raise PageForbidden(self.permission, principal.role)
        return principal


@dataclass(frozen=True, slots=True)
class Public:
    """The dependency of a route anyone may reach: it checks nothing, it says so."""

    def __call__(self) -> None:
        return None


public = Public()
"""``Depends(public)``: this route is open to anyone (probes, the login page, the docs)."""


def lacking(principal: Principal, permission: str) -> str:
    """Why ``principal`` is refused an action needing ``permission`` (a 403's detail)."""
    if permission in permissions_of(principal.role):
        return f"token {principal.credential} is limited and lacks the permission {permission}"
    return f"the role {principal.role} lacks the permission {permission}"


def _known(permission: str | None) -> str | None:
    if permission is not None and permission not in PERMISSIONS:
        msg = f"unknown permission {permission!r}; known: {', '.join(PERMISSIONS)}"
        raise ValueError(msg)
    return permission


def require(permission: str | None) -> Requirement:
    """``Depends(require("messages.replay"))``: the API route needs this permission
    (``None``: any authenticated credential).

    Raises:
        ValueError: an unknown permission (caught when the module is imported).
    """
    return Requirement(_known(permission))


def require_page(permission: str | None) -> PageRequirement:
    """``Depends(require_page("messages.read"))``: the console page needs this permission;
    without a session the browser is sent to the login page, without the permission it gets
    a 403 page."""
    return PageRequirement(_known(permission))


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The dependency of routes written before :func:`require`: it needs the permission in the
    route's ``openapi_extra={"x-permission": ...}`` (:func:`check_routes` refuses a route that
    has neither)."""
    route = request.scope.get("route")
    extra: dict[str, Any] = getattr(route, "openapi_extra", None) or {}
    return Requirement(extra.get(PERMISSION_KEY) or "users.manage")(request, credentials)


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def _name(route: RouteContext) -> str:
    return f"{'/'.join(sorted(route.methods or ()))} {route.path}"


def declared(route: RouteContext) -> str:
    """The permission an API route declares: a permission, :data:`ANY_ROLE` or :data:`PUBLIC`.

    Raises:
        ConfigurationError: the route declares none, or more than one.
    """
    found: list[str] = []
    for call in _calls(route.dependant):
        if isinstance(call, Requirement | PageRequirement):
            found.append(call.permission or ANY_ROLE)
        elif isinstance(call, Public):
            found.append(PUBLIC)
        elif call is require_token:
            extra = route.openapi_extra or {}
            if PERMISSION_KEY not in extra:
                msg = (
                    f"route {_name(route)} uses require_token without "
                    f'openapi_extra={{"{PERMISSION_KEY}": ...}}; use '
                    'dependencies=[Depends(require("<permission>"))]'
                )
                raise ConfigurationError(msg)
            found.append(_known(str(extra[PERMISSION_KEY])) or ANY_ROLE)
    if len(found) != 1:
        what = "no permission" if not found else f"{len(found)} permissions ({', '.join(found)})"
        msg = (
            f"route {_name(route)} declares {what}: give it exactly one, "
            'dependencies=[Depends(require("<permission>"))] (or Depends(public))'
        )
        raise ConfigurationError(msg)
    return found[0]


def routes_of(app: FastAPI) -> Iterator[RouteContext]:
    """Every route of the application as it serves it (included routers flattened)."""
    yield from iter_route_contexts(app.routes)


def check_routes(
    app: FastAPI, *, public_mounts: frozenset[str], framework: frozenset[str]
) -> dict[tuple[str, str], str]:
    """Refuse an application with a route that declares no permission; make its OpenAPI
    schema show each operation's permission (``x-permission``).

    Args:
        app: the application, every router included.
        public_mounts: the paths of the static mounts (no data: scripts, styles).
        framework: the paths of the framework's own routes (``/openapi.json``).

    Returns:
        The permission of every API route, by (method, path).

    Raises:
        ConfigurationError: a route declares no permission or two, or an undeclared mount.
    """
    table: dict[tuple[str, str], str] = {}
    for route in routes_of(app):
        original = route.original_route
        if isinstance(original, APIRoute):
            permission = declared(route)
            for method in route.methods or ():
                table[(method, str(route.path))] = permission
        elif isinstance(original, Mount):
            if original.path not in public_mounts:
                msg = f"mount {original.path} is not declared public; a mount checks no permission"
                raise ConfigurationError(msg)
        elif str(route.path) not in framework:
            msg = f"route {route.path} is not an API route and checks no permission"
            raise ConfigurationError(msg)
    schema = app.openapi

    def annotated() -> dict[str, Any]:
        document = schema()
        for (method, path), permission in table.items():
            operation = document.get("paths", {}).get(path, {}).get(method.lower())
            if operation is not None:
                operation[PERMISSION_KEY] = permission
        return document

    app.openapi = annotated  # type: ignore[method-assign]
    return table
