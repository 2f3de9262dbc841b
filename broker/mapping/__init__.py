"""Declarative YAML mappings: HL7 v2 and FHIR R4 input to the canonical FHIR R4 message Bundle,
and the canonical Bundle back to HL7 v2.

Usage::

    mappings = MappingSet.load(Path("mappings"))
    result = map_message(raw, mappings, source="chu-rabat-adt", envelope_id="env-1",
                         received_at=now, settings=adapter)
    er7 = mappings.render_hl7v2(result.bundle, control_id="MSG0001",
                                receiving_application="LAB", receiving_facility="CHU")

The directions are peer subpackages over the shared machinery of this package: ``hl7v2_in``
(HL7 v2 inbound), ``fhir_in`` (FHIR inbound) and ``hl7v2_out`` (outbound HL7 v2), with the named
transforms in ``transforms``.
"""

from broker.mapping.context import MapContext, MapResult, TraceStep
from broker.mapping.hl7v2_in.drops import DROPPED, tally_key
from broker.mapping.loader import MappingSet
from broker.mapping.message import (
    FHIR_JSON,
    HL7V2,
    SourceOptions,
    SourceSettings,
    map_message,
    read_message,
)

__all__ = [
    "DROPPED",
    "FHIR_JSON",
    "HL7V2",
    "MapContext",
    "MapResult",
    "MappingSet",
    "SourceOptions",
    "SourceSettings",
    "TraceStep",
    "map_message",
    "read_message",
    "tally_key",
]
