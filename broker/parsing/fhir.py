"""Reading FHIR JSON bytes, and telling them apart from HL7 v2 ER7."""

from __future__ import annotations

import json
from typing import Any

from broker.errors import FHIRParseError

__all__ = ["looks_like_json", "read_fhir"]

_BLANK = b"\xef\xbb\xbf \t\r\n"


def looks_like_json(raw: bytes) -> bool:
    """Tell whether ``raw`` starts like JSON (``{`` or ``[`` after a BOM and blanks); ER7 starts ``MSH``."""
    return raw.lstrip(_BLANK)[:1] in (b"{", b"[")


def read_fhir(raw: bytes) -> dict[str, Any]:
    """Parse FHIR JSON (UTF-8, FHIR R4 JSON format) into a resource dict.

    Raises:
        FHIRParseError: not UTF-8 JSON, or not an object with a ``resourceType``; the message
            gives the position, never the content.
    """
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        msg = f"the FHIR input is not UTF-8 text (byte {exc.start})"
        raise FHIRParseError(msg) from None
    except json.JSONDecodeError as exc:
        msg = f"the FHIR input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise FHIRParseError(msg) from None
    except RecursionError:
        raise FHIRParseError("the FHIR input is not valid JSON: it is nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        msg = "the JSON is not a FHIR resource: it has no resourceType"
        raise FHIRParseError(msg, location="resourceType")
    return data
