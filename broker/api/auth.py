"""What the API's routes import to declare who may call them (``broker.guard`` does the work).

Every route declares one permission (docs/security.md, "Who may do what")::

    router = APIRouter(prefix="/api/things", dependencies=[Depends(require("config.read"))])

    @router.post("/{id}/fix", dependencies=[Depends(require("config.write"))])  # a router without one

or ``Depends(public)`` for what anyone may reach. A route that declares none stops the
application from being built. Handlers that need to know who acts take :data:`Who` (the name
the audit trail records) or :data:`Caller` (the whole principal: role, permissions, adapter).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from broker.access import Principal
from broker.guard import (
    NOT_CONFIGURED,
    LoginRequired,
    PageForbidden,
    lacking,
    principal_of,
    public,
    require,
    require_token,
    session_of,
)

__all__ = [
    "NOT_CONFIGURED",
    "Caller",
    "LoginRequired",
    "PageForbidden",
    "Who",
    "lacking",
    "principal_of",
    "public",
    "require",
    "require_token",
    "session_of",
    "who",
]


def who(request: Request) -> str:
    """FastAPI dependency: who is acting, for the audit trail (set by the route's requirement):
    a user's name; ``api`` or ``console`` for the bootstrap token."""
    name: str = getattr(request.state, "who", "api")
    return name


Who = Annotated[str, Depends(who)]
Caller = Annotated[Principal, Depends(principal_of)]
