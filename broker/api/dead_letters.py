"""Dead-letter routes: what a subscriber refused for good, with every attempt and reply."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from broker import keys
from broker.api.auth import require_token
from broker.api.health import get_redis

__all__ = ["router"]

router = APIRouter(
    prefix="/api/dead-letters", tags=["dead letters"], dependencies=[Depends(require_token)]
)

_SUBSCRIBER = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


@router.get("/{subscriber}")
def list_dead_letters(
    subscriber: Annotated[str, Path(description="The outbound adapter's id.")],
    client: Annotated[redis.Redis, Depends(get_redis)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The newest dead letters of one subscriber: envelope id, reason, time and attempts."""
    if not _SUBSCRIBER.match(subscriber):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no subscriber with this id")
    out = []
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrevrange(
        keys.dead(subscriber), count=limit
    )  # type: ignore[assignment]
    for entry_id, fields in entries:
        out.append(
            {
                "id": _text(entry_id),
                "envelope_id": _text(fields[b"envelope"]),
                "reason": _text(fields[b"reason"]),
                "at": float(fields[b"at"]),
                "attempts": json.loads(fields.get(b"attempts", b"[]")),
            }
        )
    return out
