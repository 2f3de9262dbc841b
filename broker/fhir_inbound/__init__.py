"""FHIR R4 inbound: FHIR resources and Bundles to the canonical message Bundle (``mappings/fhir/``).

Usage::

    fhir = load_fhir(Path("mappings"), load_tables(Path("mappings/tables")))
    done = fhir.map(json.loads(raw), MapContext("env-1", "dmp-national", received_at=now))
    done.result.bundle, done.event, done.unmapped
"""

from broker.fhir_inbound.fhirpath import Expression, FHIRPathSyntaxError, compile_path
from broker.fhir_inbound.loader import FHIR_DIR, FhirProblem, load_fhir
from broker.fhir_inbound.mapper import BUNDLE_TYPES, FhirMapping, FhirResult
from broker.fhir_inbound.read import looks_like_json, read_fhir

__all__ = [
    "BUNDLE_TYPES",
    "FHIR_DIR",
    "Expression",
    "FHIRPathSyntaxError",
    "FhirMapping",
    "FhirProblem",
    "FhirResult",
    "compile_path",
    "load_fhir",
    "looks_like_json",
    "read_fhir",
]
