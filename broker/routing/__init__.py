"""Routing: which subscribers receive a canonical message."""

from __future__ import annotations

from collections.abc import Sequence

from broker.adapters.spec import AdapterSpec
from broker.envelope import Envelope
from broker.policy import refusal

__all__ = ["route"]


def route(envelope: Envelope, subscribers: Sequence[AdapterSpec]) -> list[AdapterSpec]:
    """Return the enabled outbound adapters whose subscription wants this envelope's event
    and whose data-sharing policy does not refuse it outright (``broker.policy.refusal``).

    An empty list means the message is FILTERED: kept, delivered to nobody. Consents and the
    policy's element rules apply at delivery (``broker.policy.disclose``).
    """
    event = envelope.event or ""
    return [
        sub
        for sub in subscribers
        if sub.enabled
        and sub.subscribe is not None
        and sub.subscribe.wants(event, envelope.source)
        and (sub.policy is None or refusal(sub, envelope) is None)
    ]
