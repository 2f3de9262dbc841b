"""``passerelle policy explain``: would this message be sent to this subscriber, what, and why.

The same ``disclose`` the delivery drains run, on the registration and consents in force now,
followed by the subscriber's own rendering (a FHIR transaction, or HL7 v2 through the outbound
mapping), so what is shown is what would leave.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.envelope import Envelope
from broker.errors import BrokerError
from broker.policy.consent import Consents
from broker.policy.disclose import disclose

if TYPE_CHECKING:
    from broker.adapters.spec import AdapterSpec
    from broker.mapping import MappingSet

__all__ = ["explain"]


def explain(
    subscriber: AdapterSpec,
    envelope: Envelope,
    consents: Callable[[], Consents],
    mappings: Callable[[], MappingSet],
) -> dict[str, Any]:
    """What ``subscriber`` would receive of ``envelope`` now, as JSON data.

    Returns:
        ``sent`` (bool), ``reason`` (why not, or null), ``policy`` (``id/PURPOSE`` or null),
        ``changes`` (each removed, masked, pseudonymised or restricted element with the rule
        that did it), ``consents`` (the entries that applied), ``payload`` (the FHIR
        transaction, or the HL7 v2 text, that would be sent) and ``render_error`` when the
        payload cannot be rendered.
    """
    from broker.delivery.render import ENVELOPE_SYSTEM, to_fhir_transaction

    disclosure = disclose(subscriber, envelope, consents)
    result: dict[str, Any] = {
        "message": envelope.id,
        "subscriber": subscriber.id,
        "sent": disclosure.envelope is not None,
        "reason": disclosure.reason,
        "policy": disclosure.policy,
        "changes": [
            {"action": c.action, "element": c.element, "rule": c.rule, "count": c.count}
            for c in disclosure.changes
        ],
        "consents": [c.public() for c in disclosure.consents],
        "payload": None,
    }
    shown = disclosure.envelope
    if shown is None or shown.bundle is None:
        return result
    try:
        if subscriber.transport == "fhir-rest":
            payload: Any = to_fhir_transaction(
                shown.bundle,
                client_ids=subscriber.client_ids,
                conditional_references=subscriber.conditional_references,
            )
            payload["identifier"] = {"system": ENVELOPE_SYSTEM, "value": shown.id}
        else:
            payload = mappings().render_hl7v2(
                shown.bundle,
                version=subscriber.version,
                control_id=shown.sent_control_id,
                receiving_application=subscriber.receiving_application or subscriber.id,
                receiving_facility=subscriber.receiving_facility or "",
                charset=subscriber.charset,
            )
    except BrokerError as exc:
        result["render_error"] = str(exc)
        result["bundle"] = shown.bundle
        return result
    result["payload"] = payload
    return result
