"""What the broker kept but did not deliver: refused at the edge, or failed after journalling.

Listings need ``messages.read``. One refused input needs ``messages.content``, and its bytes a
``reason`` too (``broker.api.content``): without one they are ``null`` (audited as
``message.viewed``), with one they are shown (audited as ``content.viewed`` with the reason).
"""

from __future__ import annotations

import base64
import re
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from broker import audit, keys
from broker.api.auth import Who, require
from broker.api.content import SHOWN, ReasonQuery, given_reason, withheld
from broker.api.health import get_redis
from broker.intake.journal import rejected_raw

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["refusals"])

_ENTRY = re.compile(r"^\d{1,20}-\d{1,20}$")
Limit = Annotated[int, Query(ge=1, le=1000)]
_WITHHELD = withheld("the bytes received")


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


def _sizes(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """The input's size, how much of it is kept and, for an over-size one, its SHA-256.

    An over-size input keeps only its first bytes (``Journal.reject``); ``bytes`` is still the
    whole input's size, so the operator sees what was sent.
    """
    kept = len(rejected_raw(fields))
    size = fields.get(b"size")
    sha256 = fields.get(b"sha256")
    return {
        "bytes": int(size) if size is not None else kept,
        "kept_bytes": kept,
        "sha256": _text(sha256) if sha256 is not None else None,
    }


@router.get("/rejected", dependencies=[Depends(require("messages.read"))])
def list_rejected(
    client: Annotated[redis.Redis, Depends(get_redis)], limit: Limit = 100
) -> list[dict[str, Any]]:
    """Input refused at the edge (AE/AR), newest first: adapter, peer, reason and size, no content.

    ``bytes`` is the size of what was sent; ``kept_bytes`` what is kept of it (less for an
    over-size input, which keeps its first bytes and its ``sha256``).
    """
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrevrange(keys.REJECTED, count=limit)
    return [
        {
            "id": _text(entry_id),
            "adapter": _text(fields.get(b"source")),
            "peer": _text(fields.get(b"peer")),
            "reason": _text(fields.get(b"reason")),
            **_sizes(fields),
        }
        for entry_id, fields in entries
    ]


@router.get(
    "/rejected/{entry_id}",
    dependencies=[Depends(require("messages.content"))],
    responses={
        404: {"description": "Unknown entry"},
        422: {"description": "A reason too short to say anything"},
    },
)
def show_rejected(
    entry_id: Annotated[str, Path(description="The entry id from the list.")],
    client: Annotated[redis.Redis, Depends(get_redis)],
    who: Who,
    reason: ReasonQuery = None,
) -> dict[str, Any]:
    """One refused input; its bytes (base64: they may not be text) only with a ``reason`` (else
    ``null``, and ``content`` says why). The view is audited either way.

    Of an over-size input the bytes are its first ``kept_bytes`` (see ``list_rejected``).
    """
    why = given_reason(reason)
    found: list[tuple[bytes, dict[bytes, bytes]]] = (
        client.xrange(keys.REJECTED, min=entry_id, max=entry_id) if _ENTRY.match(entry_id) else []
    )
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no rejected input with this id")
    fields = found[0][1]
    audit.viewed(client, who=who, why=why, view="rejected", rejected=entry_id)
    raw = rejected_raw(fields) if why else None
    return {
        "id": entry_id,
        "adapter": _text(fields.get(b"source")),
        "peer": _text(fields.get(b"peer")),
        "reason": _text(fields.get(b"reason")),
        **_sizes(fields),
        "raw_base64": base64.b64encode(raw).decode() if raw is not None else None,
        "content": SHOWN if why else _WITHHELD,
    }


@router.get("/quarantine", dependencies=[Depends(require("messages.read"))])
def list_quarantine(
    client: Annotated[redis.Redis, Depends(get_redis)], limit: Limit = 100
) -> list[dict[str, Any]]:
    """Journalled messages that could not be parsed, mapped or validated, newest first.

    Each names its envelope (``GET /api/messages/{id}`` shows it) and the reason: mapping file,
    rule and source path for a mapping error; never patient data.
    """
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrevrange(keys.QUARANTINE, count=limit)
    return [
        {
            "id": _text(entry_id),
            "envelope_id": _text(fields.get(b"envelope")) or None,
            "adapter": _text(fields.get(b"source")) or None,
            "reason": _text(fields.get(b"reason")),
        }
        for entry_id, fields in entries
    ]
