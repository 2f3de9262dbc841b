"""Simulated external systems for the demo, tests and benchmarks: captures and hospital senders."""

from broker.peers.fhir_capture import FhirCapture
from broker.peers.mllp_capture import MllpCapture
from broker.peers.sender import SendResult, send, send_messages

__all__ = ["FhirCapture", "MllpCapture", "SendResult", "send", "send_messages"]
