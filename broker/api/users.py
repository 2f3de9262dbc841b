"""``PUT /api/users/{name}/password``: an admin sets or resets a person's password.

The password is in the JSON body (never the URL, which proxies log), must meet the policy of
``broker.passwords`` (422 with the reason otherwise) and is kept as its Argon2id hash. The
user's console sessions opened with the previous password end (at once in this process, within
``broker.access.REVOCATION_DELAY_S`` in the others). A sending system has no password: it uses
its token. Recorded as ``password_set`` by who acted (``broker.access_events``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from broker import access_events
from broker.access import Authenticator
from broker.api.auth import Who, require
from broker.api.messages import get_store
from broker.errors import AccessError
from broker.store.credentials import find_password, set_password

__all__ = ["NewPassword", "router"]

router = APIRouter(
    prefix="/api/users", tags=["users"], dependencies=[Depends(require("users.manage"))]
)


class NewPassword(BaseModel):
    """The body of a password change."""

    model_config = ConfigDict(extra="forbid")

    password: SecretStr = Field(description="The new password: 12 characters at least.")


@router.put("/{name}/password")
async def put_password(
    request: Request,
    name: Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._@-]{0,127}$")],
    body: NewPassword,
    who: Who,
    engine: Annotated[sa.Engine, Depends(get_store)],
) -> dict[str, str]:
    """Set or reset the console password of person ``name``; its previous sessions end."""
    if await run_in_threadpool(find_password, engine, name) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {name!r}")
    try:
        user = await run_in_threadpool(
            set_password, engine, name, body.password.get_secret_value(), now=_now()
        )
    except AccessError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    authenticator: Authenticator = request.app.state.authenticator
    authenticator.forget()  # the old password's sessions end now in this process
    access_events.record("password_set", who, user=name)
    changed = datetime.fromtimestamp(user["password_changed_at"], UTC)
    return {"user": name, "password_changed_at": changed.isoformat(timespec="seconds")}


def _now() -> float:
    return datetime.now(UTC).timestamp()
