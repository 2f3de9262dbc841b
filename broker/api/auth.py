"""Bearer-token authentication: every protected route needs ``Authorization: Bearer <token>``.

Secure by default: when ``Settings.api_token`` is unset, protected routes answer 401 and say
how to configure a token; the API is never open.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broker.settings import Settings

__all__ = ["NOT_CONFIGURED", "require_token"]

NOT_CONFIGURED = (
    "API authentication is not configured: set PASSERELLE_API_TOKEN (or let `passerelle serve` "
    "generate one into data_dir/api-token); every route except /healthz and /readyz needs it"
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_bearer = HTTPBearer(auto_error=False, description="The API token (PASSERELLE_API_TOKEN).")


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """FastAPI dependency: accept the request only with the configured bearer token.

    Raises:
        HTTPException: 401 when no token is configured, none was sent or it does not match.
    """
    settings: Settings = request.app.state.settings
    if settings.api_token is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, NOT_CONFIGURED, headers=_CHALLENGE)
    if credentials is None or credentials.scheme.lower() != "bearer":
        msg = "missing bearer token: send `Authorization: Bearer <API token>`"
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, msg, headers=_CHALLENGE)
    expected = settings.api_token.get_secret_value().encode("utf-8")
    if not expected or not hmac.compare_digest(credentials.credentials.encode("utf-8"), expected):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API token", headers=_CHALLENGE)
