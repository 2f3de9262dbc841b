"""HL7 v2 outbound: the canonical message Bundle rendered as ER7 (``mappings/out/``)."""

from broker.mapping.hl7v2_out.reverse import CompiledOutbound, compile_outbound

__all__ = ["CompiledOutbound", "compile_outbound"]
