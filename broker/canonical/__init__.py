"""The canonical model: FHIR R4 message Bundles, validated with fhir.resources (R4B models)."""

from broker.canonical.checks import check
from broker.canonical.validate import validate_bundle

__all__ = ["check", "validate_bundle"]
