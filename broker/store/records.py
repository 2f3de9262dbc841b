"""From Redis to rows: what the writer makes of ``pl:store`` records, envelopes and refusals.

Pure functions over the bytes the writer read (no I/O), so the writer's loop stays short and
these are tested on their own. Nothing here logs: rows hold patient data, log lines never do.
"""

from __future__ import annotations

import contextlib
import functools
import re
from datetime import datetime
from typing import Any

import pydantic_core

from broker import sealing, trail
from broker.errors import DataKeyError, SealedDataError

__all__ = [
    "ack_code",
    "envelope_data",
    "identifier_rows",
    "message_row",
    "read_records",
    "rejected_row",
    "reply_codes",
    "sniff_msh",
]

_KINDS = (("/sid/cin", "CIN"), ("/sid/ipp", "IPP"), ("/sid/insurance", "INS"))
_HTTP = re.compile(r"^HTTP (\d{3})")
_ACK = re.compile(r"^(AA|AE|AR|CA|CE|CR)\b")


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value is not None else None


def _epoch(iso: str | None, default: float) -> float:
    if not iso:
        return default
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return default


def sniff_msh(raw: bytes) -> dict[str, str | None]:
    """MSH-9 (as ``ADT^A01``), MSH-10, MSH-12 and MSH-3^MSH-4 of raw HL7 v2, or ``None`` each.

    A cheap look at the first segment (HL7 v2.5.1 §2.14.9: MSH-1 is the field separator, so
    ``MSH-n`` is the n-th ``|``-separated piece counting ``MSH`` as the first), for refused
    input the pipeline never parsed; anything unreadable gives ``None``.
    """
    empty: dict[str, str | None] = {"event": None, "control_id": None, "version": None}
    empty["sender"] = None
    text = raw[:4096].decode("latin-1")
    start = text.find("MSH")
    if start < 0 or len(text) < start + 8:
        return empty
    segment = re.split(r"[\r\n]", text[start:], maxsplit=1)[0]
    separator = segment[3]
    fields = segment.split(separator)
    if len(fields) < 10:
        return empty
    component = fields[1][:1] or "^"

    def field(n: int) -> str | None:
        value = fields[n - 1] if len(fields) >= n else ""
        return value[:256] or None

    message_type = (fields[8] or "").split(component)
    event = "^".join(p for p in message_type[:2] if p) or None
    sender = "^".join(p for p in (field(3), field(4)) if p) or None
    return {"event": event, "control_id": field(10), "version": field(12), "sender": sender}


def ack_code(ack: bytes | None) -> str | None:
    """MSA-1 of an HL7 v2 ACK (``AA``, ``AE``…), or None."""
    if not ack or len(ack) < 4:
        return None
    separator = ack[3:4]
    for segment in re.split(rb"[\r\n]", ack):
        if segment.startswith(b"MSA" + separator):
            parts = segment.split(separator)
            return parts[1][:8].decode("latin-1") if len(parts) > 1 else None
    return None


@functools.lru_cache(maxsize=256)
def reply_codes(reply: str) -> tuple[str | None, int | None]:
    """The ACK code or the HTTP status at the start of a receiver's reply (``AA``, ``HTTP 503``)."""
    if match := _HTTP.match(reply):
        return None, int(match[1])
    if match := _ACK.match(reply):
        return match[1], None
    return None, None


def read_records(
    entries: list[tuple[str, dict[bytes, bytes] | None]],
) -> list[tuple[str, dict[str, Any]]]:
    """The records of ``pl:store`` entries, each as (its id, its fields as a JSON object).

    A ``many`` entry (a drain's batch, ``broker.trail.flush``) holds several records: the i-th
    is ``ENTRY.i``, an id as unique and as stable as the entry's (the rows it makes are written
    once). Entries of the version before ``many`` (``att`` with its fields in ``d``, ``off`` as
    JSON text) read the same. An entry deleted after it was read once has nothing left.
    """
    records: list[tuple[str, dict[str, Any]]] = []
    for entry_id, fields in entries:
        if not fields:
            continue
        kind = fields.get(b"k")
        if kind == b"many":
            items = pydantic_core.from_json(fields[b"d"])
            records.extend((f"{entry_id}.{i}", item) for i, item in enumerate(items))
        elif kind == b"att" and b"d" in fields:
            records.append((entry_id, {**pydantic_core.from_json(fields[b"d"]), "k": "att"}))
        else:
            record: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
            if "off" in record:
                record["off"] = pydantic_core.from_json(record["off"])
            records.append((entry_id, record))
    return records


def json_text(value: Any) -> str:
    """``value`` as compact UTF-8 JSON text, by pydantic-core's serialiser (Rust): a sixth of
    ``json.dumps``'s time for a canonical Bundle; the writer writes four per message."""
    return pydantic_core.to_json(value).decode()


def _kind(system: str, identifier: dict[str, Any]) -> str:
    for part, kind in _KINDS:
        if part in system:
            return kind
    codings = (identifier.get("type") or {}).get("coding") or [{}]
    return str(codings[0].get("code") or "other")


def identifier_rows(message_id: str, bundle: dict[str, Any] | None) -> list[dict[str, str]]:
    """One row per patient identifier of the canonical Bundle: CIN, IPP, insurance number…"""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for entry in (bundle or {}).get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
            continue
        for identifier in resource.get("identifier") or []:
            system = str(identifier.get("system") or "")[:512]
            value = str(identifier.get("value") or "")[:256]
            if not value:
                continue
            kind = _kind(system, identifier)
            rows[(system, value)] = {
                "message_id": message_id,
                "system": system,
                "value": value,
                "kind": kind[:32],
            }
    return list(rows.values())


def envelope_data(stored: bytes, envelope_id: str) -> dict[str, Any]:
    """The JSON of an envelope ``pl:env:ID`` holds, opened (``broker.sealing``).

    One that cannot be opened (an unknown key, altered bytes) is a row without its metadata
    whose reason says why, rather than a batch the writer can never commit.
    """
    try:
        data: dict[str, Any] = pydantic_core.from_json(sealing.open(stored, envelope_id, "env"))
    except (DataKeyError, SealedDataError) as exc:
        return {"reason": f"the envelope could not be read: {exc}"}
    return data


def message_row(
    record: dict[str, Any],
    envelope: dict[str, Any] | None,
    journal: dict[bytes, bytes] | None,
    now: float,
    stored: bytes | None = None,
) -> dict[str, Any]:
    """The ``messages`` row of a ``msg`` record (:func:`read_records`), its envelope (JSON) and
    journal entry.

    ``stored`` is the envelope as Redis held it (sealed for the message's ``env``): the row
    keeps those bytes as they are, Bundle and all, rather than serialising the Bundle again and
    sealing it a second time (~17 µs a message of the writer's ~0.2 ms, benchmarks.sealing).
    """
    env = envelope or {}
    entry = journal or {}
    ack = entry.get(b"ack")
    raw = entry.get(b"raw")
    header: dict[str, str | None] = {}
    message_id = str(record["env"])
    if env.get("control_id") is None and raw and env.get("content_type") != "application/fhir+json":
        # A message that failed before the pipeline read its MSH; the unreadable stays unread.
        with contextlib.suppress(DataKeyError, SealedDataError):
            header = sniff_msh(sealing.open(raw, message_id, "raw"))
    return {
        "id": message_id,
        "received_at": _epoch(env.get("received_at"), now),
        "adapter": env.get("source") or _text(entry.get(b"source")) or "?",
        "peer": _text(entry.get(b"peer")),
        "content_type": env.get("content_type"),
        "control_id": env.get("control_id") or header.get("control_id"),
        "sender": env.get("sender") or header.get("sender"),
        "event": env.get("event") or header.get("event"),
        "version": env.get("version") or header.get("version"),
        "state": str(record.get("st") or "routed"),
        "reason": env.get("reason"),
        "partition_key": env.get("partition_key"),
        "partition": env.get("partition"),
        "raw": raw,  # sealed by the journal for this id and field: copied, not sealed again
        "canonical": None,  # rows written before 0007_envelope: the Bundle alone
        "envelope": stored if stored is not None and env.get("id") == message_id else None,
        "mappings": json_text(env.get("mappings") or []),
        "findings": json_text(env.get("findings") or []),
        "unmapped": json_text(env.get("unmapped") or []),
        "ack": _text(ack),
        "ack_code": ack_code(ack),
        "stored_at": now,
        "edit_of": env.get("edit_of"),
        # An edit's diff holds patient data: sealed like the canonical Bundle.
        "edit": (
            sealing.seal_text(json_text(env["edit"]), message_id, "edit")
            if env.get("edit")
            else None
        ),
    }


def rejected_row(entry_id: str, fields: dict[bytes, bytes], now: float) -> dict[str, Any]:
    """The ``messages`` row of input refused at the edge (a ``pl:rejected`` entry)."""
    row_id = f"rejected-{entry_id}"
    try:
        # Journal.reject sealed them for the entry's own id (Redis names the entry afterwards).
        raw = sealing.open(fields.get(b"raw") or b"", (fields.get(b"id") or b"").decode(), "raw")
    except (DataKeyError, SealedDataError) as exc:
        raw, fields = b"", {**fields, b"reason": f"{_text(fields.get(b'reason'))} ({exc})".encode()}
    msh = sniff_msh(raw)
    ack = fields.get(b"ack")
    return {
        "id": row_id,
        "received_at": int(entry_id.partition("-")[0]) / 1000,
        "adapter": _text(fields.get(b"source")) or "?",
        "peer": _text(fields.get(b"peer")),
        "content_type": None,
        "control_id": msh["control_id"],
        "sender": msh["sender"],
        "event": msh["event"],
        "version": msh["version"],
        "state": "rejected",
        "reason": (_text(fields.get(b"reason")) or "")[: trail.REPLY_LIMIT * 4],
        "partition_key": None,
        "partition": None,
        "raw": sealing.seal(raw, row_id, "raw") if raw else raw,
        "canonical": None,
        "envelope": None,
        "mappings": "[]",
        "findings": "[]",
        "unmapped": "[]",
        "ack": _text(ack),
        "ack_code": ack_code(ack),
        "stored_at": now,
        "edit_of": None,
        "edit": None,
    }
