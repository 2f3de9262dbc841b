"""Named transforms that mapping rules call with ``function:``: HL7 v2 data types to FHIR and back.

Inbound transforms take the source values of one rule (one ``SourceValue`` per source path, or
``None`` when the path is empty), the per-message ``Env`` and the rule's validated ``args``, and
return FHIR JSON data, or ``None`` to leave the element out. They never return invalid FHIR:
a value that cannot be converted is dropped with a ``Finding`` that names the location and
never contains the value.

Outbound transforms take one canonical element and return one ER7 field repetition, already
escaped. Data-type references are v2.5.1 ch. 2A; FHIR mappings follow the HL7 v2-to-FHIR IG
(``https://build.fhir.org/ig/HL7/v2-to-fhir/``) data-type maps.

One module per family (``dates``, ``strings``, ``codes``, ``names`` for names and identifiers,
``quantities``, ``observations``, ``orders``, ``outbound``) and ``registry``, the tables by name.
"""

from broker.mapping.transforms.base import (
    Env,
    InboundTransform,
    OutboundTransform,
    SourceValue,
    Transform,
    field_read,
)
from broker.mapping.transforms.dates import hl7_date, hl7_datetime
from broker.mapping.transforms.registry import INBOUND, OUTBOUND

__all__ = [
    "INBOUND",
    "OUTBOUND",
    "Env",
    "InboundTransform",
    "OutboundTransform",
    "SourceValue",
    "Transform",
    "field_read",
    "hl7_date",
    "hl7_datetime",
]
