"""Delivery: render canonical messages for a subscriber, send them in order, retry, dead-letter.

The drains are plain functions over Redis (``drain.py``: a subscriber partition's queue;
``release.py``: a held patient's parked messages; ``acks.py``: enhanced-mode application ACKs),
called by the Celery tasks of ``broker.worker.tasks``.
"""

from broker.delivery.acks import drain_app_acks
from broker.delivery.drain import drain_outbound
from broker.delivery.release import release_patient
from broker.delivery.render import ENVELOPE_SYSTEM, to_fhir_transaction, to_hl7v2
from broker.delivery.retry import exhausted, next_delay
from broker.delivery.send import FhirRestSender, MllpSender, Sender, make_sender

__all__ = [
    "ENVELOPE_SYSTEM",
    "FhirRestSender",
    "MllpSender",
    "Sender",
    "drain_app_acks",
    "drain_outbound",
    "exhausted",
    "make_sender",
    "next_delay",
    "release_patient",
    "to_fhir_transaction",
    "to_hl7v2",
]
