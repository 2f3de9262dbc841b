"""Parsing: raw bytes → structured messages. The hot path uses the fast ER7 tokenizer."""

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
    "parse",
    "parse_path",
    "unescape",
]
