"""The inbound edge, one intake per format: read, check, journal, then answer.

An intake takes the bytes a transport received and returns an ``Outcome`` (a ``Verdict`` and
the reply); the transport (``broker.listen`` for MLLP, ``broker.api.inbound`` for HTTP) turns
it into its own answer. ``hl7v2`` and ``fhir`` are the two formats, peers with the same entry
points (``receive``, ``oversize``); ``journal`` is the append they share (``pl:in:P``,
``pl:rejected``).
"""

from __future__ import annotations

from broker.intake.fhir import FHIRIntake
from broker.intake.hl7v2 import HL7v2Intake
from broker.intake.journal import Journal
from broker.intake.outcome import Outcome, Verdict

__all__ = [
    # the intakes, and where they write
    "FHIRIntake",
    "HL7v2Intake",
    "Journal",
    # what they return
    "Outcome",
    "Verdict",
]
