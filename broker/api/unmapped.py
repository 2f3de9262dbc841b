"""Unmapped-input report: per inbound adapter, the fields that arrive and no mapping rule reads."""

from __future__ import annotations

import re
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, HTTPException, Path, status

from broker import keys
from broker.api.auth import require_token
from broker.api.health import get_redis

__all__ = ["router"]

router = APIRouter(prefix="/api/unmapped", tags=["mappings"], dependencies=[Depends(require_token)])

_ADAPTER = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@router.get("/{adapter}")
def unmapped_report(
    adapter: Annotated[str, Path(description="The inbound adapter's id.")],
    client: Annotated[redis.Redis, Depends(get_redis)],
) -> dict[str, Any]:
    """How many mapped messages came from the adapter, and per field how many carried it unread.

    Field names only (``ZPI-1``, ``IN1-2``), never values: an interface engineer's to-do list.
    """
    if not _ADAPTER.match(adapter):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no adapter with this id")
    raw: dict[bytes, bytes] = client.hgetall(keys.unmapped(adapter))  # type: ignore[assignment]
    counts = {k.decode(): int(v) for k, v in raw.items()}
    messages = counts.pop("__messages__", 0)
    fields = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return {"adapter": adapter, "messages": messages, "fields": fields}
