"""Parsing: raw bytes → structured messages: HL7 v2 ER7 (the fast tokenizer) and FHIR JSON."""

from broker.parsing.fhir import looks_like_json, read_fhir
from broker.parsing.hl7v2 import (
    Delimiters,
    Message,
    Segment,
    decode,
    escape,
    parse,
    parse_path,
    unescape,
)

__all__ = [
    "Delimiters",
    "Message",
    "Segment",
    "decode",
    "escape",
    "looks_like_json",
    "parse",
    "parse_path",
    "read_fhir",
    "unescape",
]
