"""Passerelle: an HL7 v2 / FHIR R4 interoperability message broker."""

__all__ = ["__version__"]

__version__ = "0.1.0"
