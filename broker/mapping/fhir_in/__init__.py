"""FHIR R4 inbound: FHIR resources and Bundles to the canonical message Bundle (``mappings/fhir/``).

Usage::

    files = mapping_files(Path("mappings"))
    fhir = load_fhir(files.fhir, load_tables(files.tables))
    done = fhir.map(json.loads(raw), MapContext("env-1", "dmp-national", received_at=now))
    done.result.bundle, done.event, done.unmapped
"""

from broker.mapping.fhir_in.fhirpath import Expression, FHIRPathSyntaxError, compile_path
from broker.mapping.fhir_in.loader import FhirProblem, load_fhir
from broker.mapping.fhir_in.mapper import BUNDLE_TYPES, FhirMapping, FhirResult

__all__ = [
    "BUNDLE_TYPES",
    "Expression",
    "FHIRPathSyntaxError",
    "FhirMapping",
    "FhirProblem",
    "FhirResult",
    "compile_path",
    "load_fhir",
]
