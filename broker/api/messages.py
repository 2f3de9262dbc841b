"""Message routes: read one envelope by id."""

from __future__ import annotations

import re
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, HTTPException, Path, status
from fastapi.responses import Response

from broker import keys
from broker.api.auth import require_token
from broker.api.health import get_redis

__all__ = ["router"]

router = APIRouter(prefix="/api/messages", tags=["messages"], dependencies=[Depends(require_token)])

_ENVELOPE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@router.get(
    "/{envelope_id}",
    responses={
        200: {"description": "The Envelope as JSON", "content": {"application/json": {}}},
        404: {"description": "No envelope with this id (or it expired)"},
    },
)
def get_message(
    envelope_id: Annotated[str, Path(description="The envelope id (28 hex digits).")],
    client: Annotated[redis.Redis, Depends(get_redis)],
) -> Response:
    """The Envelope stored at ``pl:env:<id>``, exactly as the pipeline wrote it."""
    # Ids are checked before they reach a Redis key, so no pattern or other key can be named.
    raw = client.get(keys.envelope(envelope_id)) if _ENVELOPE_ID.match(envelope_id) else None
    if raw is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no envelope with this id (or it expired)")
    return Response(content=raw, media_type="application/json")
