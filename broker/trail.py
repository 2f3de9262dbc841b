"""What happens to each message, queued for the message store (``broker.store``) off the ACK path.

The drains and the operator actions add small records to ``pl:store`` on the MULTI pipeline
they already send (as ``broker.timing`` does): no extra round trip, and a record exists exactly
when what it tells was committed. The store's writer (``passerelle store``) reads the stream in
batches, loads what else it needs (the envelope, the journal entry) and commits them to SQL.
Records carry ids, states and receivers' replies, never the message itself.

The drains' records (one per message routed, one per delivery attempt) are collected per batch
in a list and sent as ONE stream entry (:func:`flush`, ``k=many``): at saturation a batch holds
~150 messages, and one entry instead of one per record spares the workers, Redis and the writer
an XADD, a read, an XACK and an XDEL per record. Operator actions and state changes, rare, are
one entry each.

Records (field → value; ``k`` is the kind; times are epoch seconds)::

    k=many d=[record, ...]   (JSON: the drains' records of one batch, each a JSON object below)
    k=msg  env=ID  st=routed|filtered|failed  to=SUB,SUB  off={"SUB": "why not"}
    k=att  env=ID  sub=SUB  at=T  ms=DURATION  out=delivered|retrying|failed
           reply=what the receiver said  digest=SHA-256 of the payload  error=why
           pol=policy-id/PURPOSE (when a data-sharing policy shaped the payload)
    k=st   env=ID  sub=SUB  st=parked|dead_lettered|discarded|replayed|queued|filtered|edited
           why=REASON
           dead=DEAD_LETTER_ID   (replayed also counts the message in pl:reopened)
    k=act  env=ID  sub=SUB  act=ACTION  who=WHO  why=WHY  target=ID
    k=aud  act=ACTION  who=WHO  why=WHY  at=T  t={targets}  d={details}   (broker.audit.events)

(A version before ``many`` sent ``msg`` and ``att`` as entries of their own, ``att`` with its
fields as one JSON field ``d``; the writer still reads both.)

Usage, in a drain::

    records: list[dict[str, Any]] = []
    trail.routed(records, envelope, destinations, subscribers)
    trail.attempted(records, subscriber.id, envelope_id, ...)
    trail.flush(pipe, records)      # before pipe.execute()
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pydantic_core

from broker import keys
from broker.envelope import Envelope

if TYPE_CHECKING:
    from broker.adapters.spec import AdapterSpec

__all__ = [
    "REPLY_LIMIT",
    "Records",
    "acted",
    "attempted",
    "edited",
    "filtered",
    "filtered_reason",
    "flush",
    "routed",
    "state",
]

REPLY_LIMIT = 2000
"""A receiver's reply is kept up to this many characters."""
Records = list[dict[str, Any]]
"""The drains' records of one batch, sent as one entry by :func:`flush`."""


def filtered_reason(subscriber: AdapterSpec, envelope: Envelope) -> str:
    """Why ``subscriber`` does not receive ``envelope`` (routing chose it out): one sentence."""
    if not subscriber.enabled:
        return "the subscriber is disabled"
    if subscriber.subscribe is None:
        return "the subscriber subscribes to no event"
    sources = subscriber.subscribe.sources
    if sources is not None and envelope.source not in sources:
        return f"the subscriber takes no message from {envelope.source}"
    if subscriber.subscribe.wants(envelope.event or "", envelope.source):
        from broker.policy import refusal

        reason = refusal(subscriber, envelope)
        if reason is not None:
            return reason
    return f"the subscriber does not subscribe to {envelope.event or 'this event'}"


def routed(
    records: Records,
    envelope: Envelope,
    destinations: Sequence[AdapterSpec],
    subscribers: Sequence[AdapterSpec],
) -> None:
    """Add the record of a mapped message: its state, who gets it, who not and why.

    Args:
        records: the journal drain's records of this batch (sent by :func:`flush`).
        envelope: the message as the pipeline left it (ROUTED, FILTERED or FAILED).
        destinations: the subscribers it is queued for.
        subscribers: every enabled subscriber routing chose from.
    """
    chosen = {d.id for d in destinations}
    record: dict[str, Any] = {
        "k": "msg",
        "env": envelope.id,
        "st": envelope.state.value,
        "to": ",".join(sorted(chosen)),
    }
    if envelope.bundle is not None:
        off = {s.id: filtered_reason(s, envelope) for s in subscribers if s.id not in chosen}
        if off:
            record["off"] = off
    records.append(record)


def edited(pipe: Any, envelope: Envelope, subscriber: str) -> None:
    """Queue the record of an operator's edited copy (a new message) queued for ``subscriber``."""
    record = {"k": "msg", "env": envelope.id, "st": envelope.state.value, "to": subscriber}
    pipe.xadd(keys.STORE, record)


def attempted(
    records: Records,
    subscriber: str,
    envelope_id: str,
    *,
    at: float,
    duration_s: float,
    outcome: str,
    reply: str | None,
    digest: str | None,
    error: str | None = None,
    policy: str | None = None,
) -> None:
    """Add the record of one delivery attempt.

    Args:
        records: the delivery drain's records of this batch (sent by :func:`flush`).
        subscriber: the subscriber's adapter id.
        envelope_id: the message sent.
        at: when the attempt started (epoch seconds).
        duration_s: how long it took (render, send, reply).
        outcome: ``delivered``, ``retrying`` or ``failed`` (dead-lettered, or stays so).
        reply: what the receiver answered (``AA``, ``HTTP 200``, an ACK's text, a body).
        digest: SHA-256 of the payload sent, when it was rendered.
        error: why the attempt failed.
        policy: ``policy-id/PURPOSE`` of the data-sharing policy the payload was shaped by
            (``pol``, left out when none): the audit of disclosures names it.
    """
    records.append(
        {
            "k": "att",
            "env": envelope_id,
            "sub": subscriber,
            "at": at,
            "ms": round(duration_s * 1000, 3),
            "out": outcome,
            "reply": (reply or "")[:REPLY_LIMIT],
            "digest": digest or "",
            "error": (error or "")[:REPLY_LIMIT],
            **({"pol": policy} if policy else {}),
        }
    )


def filtered(records: Records, subscriber: str, envelope_id: str, reason: str) -> None:
    """Add the record of a message the subscription, policy or a consent refused at sending."""
    records.append(
        {
            "k": "st",
            "env": envelope_id,
            "sub": subscriber,
            "st": "filtered",
            "why": reason[:REPLY_LIMIT],
            "dead": "",
            "at": time.time(),
        }
    )


def flush(pipe: Any, records: Records) -> None:
    """Queue ``records`` on ``pipe`` as one ``pl:store`` entry (none if empty); empty the list.

    Written by pydantic-core (Rust), 3-6x faster than ``json.dumps``.
    """
    if records:
        pipe.xadd(keys.STORE, {"k": "many", "d": pydantic_core.to_json(records)})
        records.clear()


def state(
    pipe: Any,
    subscriber: str,
    envelope_id: str,
    new_state: str,
    *,
    reason: str = "",
    dead_letter: str = "",
) -> None:
    """Queue a change of one message's state for one subscriber (parked, dead-lettered…).

    ``replayed`` (an operator queued the message again) also counts the message in
    ``pl:reopened``, on the same pipeline: its envelope stays in Redis until the store's writer
    has stored this record, even if the store still says the message was delivered.
    """
    if new_state == "replayed":
        pipe.hincrby(keys.REOPENED, envelope_id, 1)
    record = {
        "k": "st",
        "env": envelope_id,
        "sub": subscriber,
        "st": new_state,
        "why": reason[:REPLY_LIMIT],
        "dead": dead_letter,
        "at": repr(time.time()),
    }
    pipe.xadd(keys.STORE, record)


def acted(
    pipe: Any,
    subscriber: str,
    envelope_id: str,
    action: str,
    *,
    who: str,
    why: str,
    target: str = "",
) -> None:
    """Queue an operator's action on one message for one subscriber (replay, discard…)."""
    record = {
        "k": "act",
        "env": envelope_id,
        "sub": subscriber,
        "act": action,
        "who": who,
        "why": why[:REPLY_LIMIT],
        "target": target,
        "at": repr(time.time()),
    }
    pipe.xadd(keys.STORE, record)
