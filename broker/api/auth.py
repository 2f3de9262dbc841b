"""Authentication of every protected route: the API token as a bearer, or a console session.

Secure by default: when ``Settings.api_token`` is unset, protected routes answer 401 and say
how to configure a token; the API is never open. The credentials themselves are checked by
:mod:`broker.access` (the one place issue 10 replaces); this module turns its verdict into
FastAPI dependencies:

- :func:`require_token` for the JSON API: ``Authorization: Bearer <token>``, or the console's
  session cookie, which for a POST (or any unsafe method) must come with the session's CSRF
  token in the ``X-CSRF-Token`` header;
- :func:`require_session` for the console's pages: the session cookie, else
  :class:`LoginRequired` (the application answers it with a redirect to the login page).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broker.access import CSRF_HEADER, SESSION_COOKIE, Session, read_session, token_matches
from broker.settings import Settings

__all__ = [
    "NOT_CONFIGURED",
    "LoginRequired",
    "Who",
    "require_session",
    "require_token",
    "session_of",
    "who",
]

NOT_CONFIGURED = (
    "API authentication is not configured: set PASSERELLE_API_TOKEN (or let `passerelle serve` "
    "generate one into data_dir/api-token); every route except /healthz and /readyz needs it"
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_API = "api"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_bearer = HTTPBearer(auto_error=False, description="The API token (PASSERELLE_API_TOKEN).")


class LoginRequired(Exception):
    """Raised by :func:`require_session`: a console page was asked for without a session."""


def session_of(request: Request) -> Session | None:
    """The console session of the request's cookie, or ``None``."""
    settings: Settings = request.app.state.settings
    return read_session(settings, request.cookies.get(SESSION_COOKIE))


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """FastAPI dependency: accept the request only with the API token or a console session.

    Raises:
        HTTPException: 401 when no token is configured, none was sent or it does not match;
            403 when a console session's unsafe request lacks its CSRF token.
    """
    settings: Settings = request.app.state.settings
    if settings.api_token is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, NOT_CONFIGURED, headers=_CHALLENGE)
    if credentials is None:
        session = session_of(request)
        if session is None:
            msg = "missing bearer token: send `Authorization: Bearer <API token>`"
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, msg, headers=_CHALLENGE)
        if request.method not in _SAFE_METHODS and not session.csrf_matches(
            request.headers.get(CSRF_HEADER)
        ):
            msg = f"missing or wrong CSRF token: send the console's {CSRF_HEADER} header"
            raise HTTPException(status.HTTP_403_FORBIDDEN, msg)
        request.state.who = session.who
        return
    if credentials.scheme.lower() != "bearer":
        msg = "missing bearer token: send `Authorization: Bearer <API token>`"
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, msg, headers=_CHALLENGE)
    if not token_matches(settings, credentials.credentials):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API token", headers=_CHALLENGE)
    request.state.who = _API


def who(request: Request) -> str:
    """FastAPI dependency: who is acting, for the audit trail: ``api`` (the bearer token) or
    ``console`` (a console session); set by :func:`require_token`."""
    name: str = getattr(request.state, "who", _API)
    return name


Who = Annotated[str, Depends(who)]


def require_session(request: Request) -> Session:
    """FastAPI dependency of the console's pages: the logged-in session.

    The session is also left in ``request.state.session`` for the page to embed its CSRF token.

    Raises:
        LoginRequired: no valid session cookie (the app redirects to the login page).
    """
    session = session_of(request)
    if session is None:
        raise LoginRequired
    request.state.session = session
    return session
