"""FHIR R4 inbound: FHIR resources and Bundles to the canonical message Bundle (``mappings/fhir/``).

Usage::

    files = mapping_files(Path("mappings"))
    fhir = load_fhir(files.fhir, load_tables(files.tables))
    result = fhir.map(json.loads(raw), MapContext("env-1", "dmp-national", received_at=now))
    result.bundle, result.event, result.unmapped
"""

from broker.mapping.fhir_in.fhirpath import Expression, FHIRPathSyntaxError, compile_path
from broker.mapping.fhir_in.loader import FhirProblem, load_fhir
from broker.mapping.fhir_in.mapper import BUNDLE_TYPES, FHIR_VERSION, FhirMapping

__all__ = [
    "BUNDLE_TYPES",
    "FHIR_VERSION",
    "Expression",
    "FHIRPathSyntaxError",
    "FhirMapping",
    "FhirProblem",
    "compile_path",
    "load_fhir",
]
