"""Delivery: render canonical messages for a subscriber, send them, decide on retries."""

from broker.delivery.render import ENVELOPE_SYSTEM, to_fhir_transaction, to_hl7v2
from broker.delivery.retry import exhausted, next_delay
from broker.delivery.send import FhirRestSender, MllpSender, Sender, make_sender

__all__ = [
    "ENVELOPE_SYSTEM",
    "FhirRestSender",
    "MllpSender",
    "Sender",
    "exhausted",
    "make_sender",
    "next_delay",
    "to_fhir_transaction",
    "to_hl7v2",
]
