"""Simulated external systems for the demo, tests and benchmarks: captures and hospital senders."""

from passerelle_demo.peers.fhir_capture import FhirCapture
from passerelle_demo.peers.mllp_capture import MllpCapture
from passerelle_demo.peers.sender import SendResult, send, send_messages

__all__ = ["FhirCapture", "MllpCapture", "SendResult", "send", "send_messages"]
