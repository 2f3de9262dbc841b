"""Per-hop timestamps from inside the drains for the steady-load benchmark (PASSERELLE_TIMINGS).

Off by default, and then each call is one attribute test: no clock read, no Redis command. On,
each drain adds one ``XADD pl:timings`` per message to the MULTI it already sends for its batch
(no extra round trip); the stream is capped (``MAX_RECORDS``, approximate trim), so a broker left
with timings on keeps a bounded amount.

What carries time already is used rather than recorded twice: a stream entry id is its append
time in milliseconds (Redis's clock, the same machine's), so the journal entry id is when the
message was journalled, an outbound entry id is when the pipeline committed it, and the id of a
``pl:timings`` record (appended in the batch's MULTI) is when that batch committed.

Records (field → value; times are epoch seconds)::

    hop=map   env=ENVELOPE  in=JOURNAL_ENTRY_ID  t0=mapping start  t1=mapping end
    hop=send  env=ENVELOPE  sub=SUBSCRIBER  out=OUTBOUND_ENTRY_ID  t0=attempt start  t1=reply

They carry ids and times only, never patient data.

Usage, in a drain::

    started = timing.start(settings)
    envelope, destinations = process(...)
    timing.mapped(pipe, settings, entry_id, envelope.id, started)
"""

from __future__ import annotations

import time
from typing import Any

from broker import keys
from broker.settings import Settings

__all__ = ["MAX_RECORDS", "entry_time", "mapped", "sent", "start"]

MAX_RECORDS = 300_000
"""``pl:timings`` keeps about this many records (a few tens of MB at most)."""


def start(settings: Settings) -> float:
    """When a timed step starts: ``time.time()`` with timings on, ``0.0`` (no clock read) off."""
    return time.time() if settings.timings else 0.0


def mapped(pipe: Any, settings: Settings, entry_id: str, envelope_id: str, started: float) -> None:
    """Queue the mapping record of one journal entry on the batch's ``pipe`` (timings on only).

    Args:
        pipe: the drain's MULTI pipeline for this batch.
        settings: whether timings are on.
        entry_id: the journal entry (its id is the append time).
        envelope_id: the envelope it became.
        started: ``start(settings)`` taken just before the mapping.
    """
    if settings.timings:
        record = {
            "hop": "map",
            "env": envelope_id,
            "in": entry_id,
            "t0": started,
            "t1": time.time(),
        }
        pipe.xadd(keys.TIMINGS, record, maxlen=MAX_RECORDS, approximate=True)


def sent(
    pipe: Any,
    settings: Settings,
    subscriber: str,
    entry_id: str,
    envelope_id: str,
    started: float,
) -> None:
    """Queue the delivery-attempt record of one queue entry on the batch's ``pipe`` (timings on).

    Args:
        pipe: the delivery drain's MULTI pipeline for this batch.
        settings: whether timings are on.
        subscriber: the subscriber's adapter id.
        entry_id: the outbound queue entry (its id is when the pipeline committed it).
        envelope_id: the envelope sent.
        started: ``start(settings)`` taken just before the attempt (envelope load, render, send).
    """
    if settings.timings:
        record = {
            "hop": "send",
            "env": envelope_id,
            "sub": subscriber,
            "out": entry_id,
            "t0": started,
            "t1": time.time(),
        }
        pipe.xadd(keys.TIMINGS, record, maxlen=MAX_RECORDS, approximate=True)


def entry_time(entry_id: str | bytes) -> float:
    """The epoch seconds a stream entry id encodes (its millisecond part)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0]) / 1000
