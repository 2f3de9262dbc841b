"""Unmapped-input report: per inbound adapter, the fields that arrive and no mapping rule reads."""

from __future__ import annotations

import re
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, HTTPException, Path, status

from broker import keys
from broker.api.auth import require
from broker.api.health import get_redis
from broker.pipeline import DROPPED_PREFIX

__all__ = ["router"]

router = APIRouter(
    prefix="/api/unmapped", tags=["mappings"], dependencies=[Depends(require("config.read"))]
)

_ADAPTER = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@router.get("/{adapter}")
def unmapped_report(
    adapter: Annotated[str, Path(description="The inbound adapter's id.")],
    client: Annotated[redis.Redis, Depends(get_redis)],
) -> dict[str, Any]:
    """How many mapped messages came from the adapter, and per field how many carried it unread.

    Field names only (``ZPI-1``, ``IN1-2``), never values: an interface engineer's to-do list.
    ``dropped_segments`` counts the malformed segment groups the mapping dropped (or, with
    ``on_invalid_segment: quarantine``, quarantined the message for), by structural location
    and the check or FHIR element that failed, most frequent first; ``segments_dropped`` is
    their total.
    """
    if not _ADAPTER.match(adapter):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no adapter with this id")
    raw: dict[bytes, bytes] = client.hgetall(keys.unmapped(adapter))
    counts = {k.decode(): int(v) for k, v in raw.items()}
    messages = counts.pop("__messages__", 0)
    drops: list[tuple[int, str, str]] = []
    for key in [k for k in counts if k.startswith(DROPPED_PREFIX)]:
        location, _, rule = key.removeprefix(DROPPED_PREFIX).partition("|")
        drops.append((counts.pop(key), location, rule))
    drops.sort(key=lambda d: (-d[0], d[1], d[2]))
    fields = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return {
        "adapter": adapter,
        "messages": messages,
        "fields": fields,
        "segments_dropped": sum(d[0] for d in drops),
        "dropped_segments": [{"location": d[1], "rule": d[2], "count": d[0]} for d in drops],
    }
