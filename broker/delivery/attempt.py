"""One delivery attempt and what it came to: delivered, retried after a back-off, or dead.

Every failed attempt is recorded in ``pl:attempts:SUB`` (by queue entry: its stream and its id,
``keys.attempt_entry``) with the error and the receiver's reply, so the retry policy can count
them and a dead letter can show them all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from broker import keys, trail
from broker.adapters.spec import AdapterSpec
from broker.delivery.retry import exhausted, next_delay
from broker.delivery.send import Sender
from broker.envelope import Envelope
from broker.errors import PermanentDeliveryError, RetryableDeliveryError
from broker.log import bind, get_logger
from broker.policy import Consents, disclose

__all__ = ["Outcome", "attempt"]

log = get_logger(__name__)


@dataclass
class Outcome:
    """What sending one message came to.

    Attributes:
        delivered: the receiver confirmed it.
        retry_after: a retryable failure within the policy: try again in this many seconds.
        dead: refused for good, out of retries, or a bug while rendering: a dead letter.
        attempts: every failed attempt so far (``at``, ``error``, ``reply``).
        reason: why it is dead, for the dead letter.
        at: when this attempt started (epoch seconds).
        duration_s: how long it took.
        reply: what the receiver said: its confirmation (``AA``, ``HTTP 200``) or its refusal.
        digest: SHA-256 of the payload sent, when the sender rendered one.
        filtered: the subscription, the policy or a consent in force now refuses it: nothing
            was sent, and nothing will be (``reason`` says why).
        policy: ``policy-id/PURPOSE`` of the policy that shaped the payload.
    """

    delivered: bool = False
    retry_after: float | None = None
    dead: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    at: float = 0.0
    duration_s: float = 0.0
    reply: str | None = None
    digest: str | None = None
    filtered: bool = False
    policy: str | None = None

    def record(self, records: trail.Records, subscriber: str, envelope_id: str) -> None:
        """Add this attempt's record for the message store to ``records`` (``broker.trail``).

        A filtered message is a change of state (``filtered`` with the reason), not an attempt.
        """
        if self.filtered:
            trail.filtered(records, subscriber, envelope_id, self.reason)
            return
        if self.delivered:
            outcome, error = "delivered", None
        else:
            outcome = "retrying" if self.retry_after is not None else "failed"
            error = self.attempts[-1]["error"] if self.attempts else self.reason
        trail.attempted(
            records,
            subscriber,
            envelope_id,
            at=self.at,
            duration_s=self.duration_s,
            outcome=outcome,
            reply=self.reply,
            digest=self.digest,
            error=error,
            policy=self.policy,
        )


def _record(
    client: redis.Redis, subscriber: str, entry: str, exc: BaseException
) -> list[dict[str, Any]]:
    """Append a failed attempt to the entry's record (``entry``: ``keys.attempt_entry``); return
    every attempt so far."""
    key = keys.ATTEMPTS + subscriber
    previous = client.hget(key, entry)
    attempts: list[dict[str, Any]] = json.loads(previous) if previous else []
    attempts.append({"at": time.time(), "error": str(exc), "reply": getattr(exc, "reply", None)})
    client.hset(key, entry, json.dumps(attempts))
    return attempts


def attempt(
    client: redis.Redis,
    subscriber: AdapterSpec,
    sender: Sender,
    entry: str,
    envelope: Envelope,
    *,
    consents: Callable[[], Consents],
) -> Outcome:
    """Send one envelope to ``subscriber`` and classify the result; never raises for a delivery problem.

    What is sent is what the subscription, the data-sharing policy and the patient's consents in
    force now let through (``broker.policy.disclose``), for a first delivery as for a replay.

    Args:
        client: the broker's Redis (the attempts are recorded there).
        subscriber: the subscriber's registration (its retry policy, subscription and policy).
        sender: the subscriber's sender.
        entry: the queue entry (or parked entry) the envelope came from, named by its stream
            and its id (``keys.attempt_entry``): the key of its record of attempts, which only
            that stream's one drainer updates.
        envelope: the canonical message.
        consents: the consent registry's snapshot for this batch (``ConsentLookup``).
    """
    bind(envelope_id=envelope.id, correlation_id=envelope.correlation_id, route=subscriber.id)
    started = time.time()
    outcome = _attempt(client, subscriber, sender, entry, envelope, consents)
    outcome.at = started
    outcome.duration_s = time.time() - started
    outcome.digest = getattr(sender, "last_digest", None)
    if not outcome.delivered and outcome.attempts:
        outcome.reply = outcome.attempts[-1].get("reply")
    return outcome


def _attempt(
    client: redis.Redis,
    subscriber: AdapterSpec,
    sender: Sender,
    entry: str,
    envelope: Envelope,
    consents: Callable[[], Consents],
) -> Outcome:
    policy = None
    try:
        disclosure = disclose(subscriber, envelope, consents)
        policy = disclosure.policy
        if disclosure.envelope is None:
            reason = disclosure.reason or "refused by the data-sharing policy"
            log.info("delivery.filtered", reason=reason)
            return Outcome(filtered=True, reason=reason, policy=policy)
        confirmation = sender.send(disclosure.envelope)
    except RetryableDeliveryError as exc:
        attempts = _record(client, subscriber.id, entry, exc)
        age = time.time() - attempts[0]["at"]
        if exhausted(subscriber.retry, len(attempts), age):
            return Outcome(
                dead=True, attempts=attempts, reason=f"retries exhausted: {exc}", policy=policy
            )
        delay = next_delay(subscriber.retry, len(attempts))
        log.warning(
            "delivery.retrying", attempt=len(attempts), delay_s=round(delay, 2), error=str(exc)
        )
        return Outcome(retry_after=delay, attempts=attempts, policy=policy)
    except PermanentDeliveryError as exc:
        return Outcome(
            dead=True,
            attempts=_record(client, subscriber.id, entry, exc),
            reason=str(exc),
            policy=policy,
        )
    except Exception as exc:
        # A bug in rendering must not block the partition forever: park the message
        # (replayable once fixed) and let the patients behind it through.
        log.exception("delivery.internal_error")
        reason = (
            f"internal error while rendering or sending ({type(exc).__name__}); see the worker log"
        )
        attempts = _record(client, subscriber.id, entry, exc)
        return Outcome(dead=True, attempts=attempts, reason=reason, policy=policy)
    return Outcome(delivered=True, reply=confirmation, policy=policy)
