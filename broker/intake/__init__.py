"""The inbound edge, one intake per format: read, check, journal, then answer.

An intake takes the bytes a transport received and returns what became of them; the transport
(the MLLP listener, the HTTP routes) turns that into its answer. ``hl7v2`` and ``fhir`` are the
two formats; ``journal`` is the append they share (``pl:in:P``, ``pl:rejected``).
"""

from __future__ import annotations

__all__: list[str] = []
