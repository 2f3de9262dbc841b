"""Passerelle's own alert rules, evaluated by beat's housekeeping; one notice per incident.

Rules (defaults; a YAML file, ``PASSERELLE_ALERTS_FILE``, changes or disables them with
``null``; errors name the file, line and key)::

    subscriber_failing: {for_minutes: 5}       # a delivery has been retrying that long
    backlog_older_than: {seconds: 600, for_minutes: 0}
    error_rate: {over: 0.05, window_minutes: 5, min_messages: 10}   # refused / offered
    dead_letters: {for_minutes: 0}             # a subscriber has open dead letters
    listener_down: {for_minutes: 1}            # an MLLP listener accepts no connection

Each rule's condition is checked per subject (a subscriber, an inbound adapter) at every
housekeeping run. A condition that holds for ``for_minutes`` opens an *incident*; the incident is
recorded in Redis (``pl:incidents``, with ``HSETNX``) and notified once, when it opens; once the
condition no longer holds it is deleted (``HDEL``) and its recovery notified once. Since the
state is in Redis, a restarted beat (or a second one) neither notifies an open incident again nor
forgets to notify its recovery. The time since which each condition holds is kept there too
(``pl:alert:since``), and the error rate compares each adapter's counters with those at the
start of the window (``pl:alert:windows``): the verdict of the last whole window stands until
the next one ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel, Field

from broker import keys
from broker.log import get_logger
from broker.ops.notify import Notice, Notifier, send_all
from broker.ops.processes import listener_up
from broker.ops.stats import group_stats
from broker.yamlspec import load_model

__all__ = ["AlertRules", "evaluate", "load_rules"]

log = get_logger(__name__)


class _Rule(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    for_minutes: float = Field(0, ge=0)
    """How long the condition must hold before the incident opens."""


class SubscriberFailing(_Rule):
    """A subscriber's delivery has been failing (retrying) for ``for_minutes``."""

    for_minutes: float = Field(5, ge=0)


class BacklogOlderThan(_Rule):
    """A subscriber's oldest undelivered message is older than ``seconds``."""

    seconds: float = Field(600, gt=0)


class ErrorRate(_Rule):
    """An inbound adapter refused more than ``over`` of what it was offered in a window."""

    over: float = Field(0.05, gt=0, le=1)
    window_minutes: float = Field(5, gt=0)
    min_messages: int = Field(10, ge=1)
    """Fewer messages than this in the window: no verdict (one refusal of two is not a rate)."""


class DeadLetters(_Rule):
    """A subscriber has open dead letters (a new one opens the incident)."""


class ListenerDown(_Rule):
    """An inbound MLLP adapter's listener accepts no TCP connection."""

    for_minutes: float = Field(1, ge=0)


class AlertRules(BaseModel):
    """The rules in force; ``null`` in the YAML file turns one off."""

    model_config = {"extra": "forbid", "frozen": True}

    subscriber_failing: SubscriberFailing | None = SubscriberFailing()
    backlog_older_than: BacklogOlderThan | None = BacklogOlderThan()
    error_rate: ErrorRate | None = ErrorRate()
    dead_letters: DeadLetters | None = DeadLetters()
    listener_down: ListenerDown | None = ListenerDown()


def load_rules(path: Path | None) -> AlertRules:
    """The rules of ``path``, or the defaults when ``None``.

    Raises:
        SpecError: the file is unreadable or invalid (file, line, key and reason).
    """
    return AlertRules() if path is None else load_model(path, AlertRules)


_Key = tuple[str, str]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _conditions(
    client: redis.Redis,
    rules: AlertRules,
    *,
    subscribers: Sequence[str],
    inbound: Sequence[str],
    listeners: Sequence[tuple[str, str, int]],
    partitions: int,
    now: float,
) -> dict[_Key, tuple[str, float]]:
    """Every condition that holds now: (rule, subject) → (summary, for_minutes)."""
    holding: dict[_Key, tuple[str, float]] = {}
    if (failing := rules.subscriber_failing) is not None:
        for sub in subscribers:
            if retrying := int(client.hlen(keys.ATTEMPTS + sub)):
                summary = f"deliveries to {sub} are failing: {retrying} message(s) retrying"
                holding[("subscriber_failing", sub)] = (summary, failing.for_minutes)
    if (old := rules.backlog_older_than) is not None:
        for sub in subscribers:
            ages = [
                group_stats(client, keys.outbound(sub, p), keys.DELIVER_GROUP).oldest_age_s
                for p in range(partitions)
            ]
            age = max((a for a in ages if a is not None), default=0.0)
            if age > old.seconds:
                summary = f"the oldest message waiting for {sub} is {age:.0f} s old"
                holding[("backlog_older_than", sub)] = (summary, old.for_minutes)
    if (rate := rules.error_rate) is not None:
        for adapter in inbound:
            if (summary_rate := _error_rate(client, adapter, rate, now)) is not None:
                holding[("error_rate", adapter)] = (summary_rate, rate.for_minutes)
    if (dead := rules.dead_letters) is not None:
        for sub in subscribers:
            if opened := int(client.scard(keys.dead_open(sub))):
                summary = f"{sub} has {opened} open dead letter(s)"
                holding[("dead_letters", sub)] = (summary, dead.for_minutes)
    if (down := rules.listener_down) is not None:
        for adapter, host, port in listeners:
            if not listener_up(client, adapter, host, port):
                summary = f"the listener of {adapter} on {host}:{port} accepts no connection"
                holding[("listener_down", adapter)] = (summary, down.for_minutes)
    return holding


def _error_rate(client: redis.Redis, adapter: str, rule: ErrorRate, now: float) -> str | None:
    """The adapter's refusal rate over the last whole window, as a summary when over the rule."""
    raw: Any = client.hgetall(keys.adapter_stats(adapter))
    fields = {_text(k): int(v) for k, v in raw.items() if _text(k) != "last_ms"}
    received = fields.get("received", 0)
    refused = sum(v for k, v in fields.items() if k.startswith("refused:"))
    previous = client.hget(keys.ALERT_WINDOWS, adapter)
    window = json.loads(previous) if previous else None
    if window is None or now - window["at"] >= rule.window_minutes * 60:
        verdict = None
        if window is not None:
            offered = received + refused - window["received"] - window["refused"]
            bad = refused - window["refused"]
            if offered >= rule.min_messages and bad / offered > rule.over:
                verdict = f"{adapter} refused {bad} of {offered} messages ({bad / offered:.0%})"
        window = {"at": now, "received": received, "refused": refused, "verdict": verdict}
        client.hset(keys.ALERT_WINDOWS, adapter, json.dumps(window))
    verdict_text: str | None = window.get("verdict")
    return verdict_text


def evaluate(
    client: redis.Redis,
    rules: AlertRules,
    *,
    subscribers: Sequence[str],
    inbound: Sequence[str],
    listeners: Sequence[tuple[str, str, int]],
    partitions: int,
    channels: Sequence[Notifier],
    now: float | None = None,
) -> list[Notice]:
    """Check every rule, open and close incidents, notify each change once; return the notices.

    Args:
        client: the broker's Redis (the incidents are kept there).
        rules: the rules in force.
        subscribers: the enabled subscribers' ids.
        inbound: the enabled inbound adapters' ids.
        listeners: each inbound MLLP adapter's ``(id, host, port)``.
        partitions: subscriber partitions to look at.
        channels: where to notify (:func:`broker.ops.notify.notifiers`).
        now: the current time in epoch seconds (tests).
    """
    now = time.time() if now is None else now
    holding = _conditions(
        client,
        rules,
        subscribers=subscribers,
        inbound=inbound,
        listeners=listeners,
        partitions=partitions,
        now=now,
    )
    since_raw: Any = client.hgetall(keys.ALERT_SINCE)
    since = {_text(k): float(v) for k, v in since_raw.items()}
    open_raw: Any = client.hgetall(keys.INCIDENTS)
    incidents = {_text(k): json.loads(v) for k, v in open_raw.items()}
    notices: list[Notice] = []
    for (rule, subject), (summary, for_minutes) in sorted(holding.items()):
        field = f"{rule}:{subject}"
        started = since.get(field)
        if started is None:
            client.hsetnx(keys.ALERT_SINCE, field, now)
            started = now
        if field in incidents or now - started < for_minutes * 60:
            continue
        record = {"rule": rule, "subject": subject, "summary": summary, "opened_at": now}
        if client.hsetnx(keys.INCIDENTS, field, json.dumps(record)):
            log.warning("alert.opened", rule=rule, subject=subject, summary=summary)
            notices.append(Notice("firing", rule, subject, summary, now))
    fields = {f"{rule}:{subject}" for rule, subject in holding}
    stale = [f for f in since if f not in fields]
    if stale:
        client.hdel(keys.ALERT_SINCE, *stale)
    for field, record in sorted(incidents.items()):
        if field in fields or not client.hdel(keys.INCIDENTS, field):
            continue
        rule, subject = record["rule"], record["subject"]
        log.info("alert.resolved", rule=rule, subject=subject)
        summary = f"recovered: {record['summary']}"
        notices.append(Notice("resolved", rule, subject, summary, record["opened_at"], now))
    for notice in notices:
        send_all(list(channels), notice)
    return notices
