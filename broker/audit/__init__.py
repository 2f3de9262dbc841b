"""The audit trail: append-only, hash-chained, one appender; what happened to whose data, by whom.

``events.record`` is how any process tells the trail something (an ``aud`` record on
``pl:store``); the store's writer links each into the chain (``broker.store.ledger``), with one
disclosure per delivered message; ``broker.store.verify`` walks it. ``key`` holds the HMAC key
and the keyed patient references, ``chain`` the link arithmetic, ``anchor`` the copies of the
head that reveal a deleted tail, ``fhir`` the export as FHIR R4 AuditEvent resources.
"""

from __future__ import annotations

from broker.audit.anchor import ANCHOR_FILE, Anchor, read_anchors
from broker.audit.chain import GENESIS, link
from broker.audit.events import ACTIONS, record, viewed
from broker.audit.key import ensure_key, load_key, patient_ref

__all__ = [
    "ACTIONS",
    "ANCHOR_FILE",
    "GENESIS",
    "Anchor",
    "ensure_key",
    "link",
    "load_key",
    "patient_ref",
    "read_anchors",
    "record",
    "viewed",
]
