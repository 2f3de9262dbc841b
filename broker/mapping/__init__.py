"""Declarative YAML mappings: HL7 v2 to the canonical FHIR R4 message Bundle, and back.

Usage::

    mappings = MappingSet.load(Path("mappings"))
    result = mappings.map_hl7v2(parse(text), MapContext("env-1", "chu-rabat-adt", received_at=now))
    er7 = mappings.render_hl7v2(result.bundle, control_id="MSG0001",
                                receiving_application="LAB", receiving_facility="CHU")
"""

from broker.mapping.context import MapContext, MapResult, TraceStep
from broker.mapping.loader import MappingSet

__all__ = ["MapContext", "MapResult", "MappingSet", "TraceStep"]
