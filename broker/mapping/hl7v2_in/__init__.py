"""HL7 v2 inbound: ER7 messages to the canonical FHIR R4 message Bundle (``mappings/hl7v2/``).

The engine compiles an inbound mapping file (``engine.compile_inbound``) into rules over segment
groups (``scopes``), site files over their base (``sites``), and drops malformed segment groups
with a finding (``drops``).
"""

from broker.mapping.hl7v2_in.engine import CompiledMapping, compile_inbound
from broker.mapping.hl7v2_in.sites import compile_site, site_order

__all__ = ["CompiledMapping", "compile_inbound", "compile_site", "site_order"]
