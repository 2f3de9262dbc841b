"""Every exception the broker raises, under one base.

The tree (repeated in ``docs/errors.md``)::

    BrokerError
    ├── ConfigurationError          found at start-up; the process refuses to start
    │   ├── SpecError               a YAML file is wrong; names file, line and key
    │   │   ├── MappingSpecError
    │   │   └── AdapterSpecError
    │   ├── ServiceUnavailable      Redis or another required service cannot be reached
    │   └── DataKeyError            no data key, a malformed key, or a body sealed with an unknown key
    ├── MessageError                one message is wrong; never retried; drives AE/AR
    │   ├── ParseError
    │   │   ├── HL7v2ParseError     carries the segment/field location
    │   │   └── FHIRParseError
    │   ├── NoMappingError          no mapping for this message type and version (AR)
    │   ├── MappingError            carries mapping file + rule + source path
    │   ├── CanonicalError          the mapped FHIR Bundle breaks FHIR R4 or a broker invariant
    │   └── RejectedError           refused at the edge before journalling (size, duplicate frame, …)
    ├── JournalError                the journal could not accept the message (AR, HTTP 503)
    ├── AccessError                 a user or token change is refused (unknown user, role mismatch…)
    ├── SealedDataError             a stored body fails its authentication (altered, or moved between records)
    └── DeliveryError               carries destination + attempt
        ├── RetryableDeliveryError  timeout, connection refused, 5xx, AE/AR/no ACK from MLLP peer
        └── PermanentDeliveryError  4xx: the receiver will never accept this payload

Messages point to the data without containing it: they give a location
(``PID-7``, ``Bundle.entry[2]``) and what was expected, never a patient's value.
"""

from __future__ import annotations

__all__ = [
    "AccessError",
    "AdapterSpecError",
    "BrokerError",
    "CanonicalError",
    "ConfigurationError",
    "DataKeyError",
    "DeliveryError",
    "FHIRParseError",
    "HL7v2ParseError",
    "JournalError",
    "MappingError",
    "MappingSpecError",
    "MessageError",
    "NoMappingError",
    "ParseError",
    "PermanentDeliveryError",
    "RejectedError",
    "RetryableDeliveryError",
    "SealedDataError",
    "ServiceUnavailable",
    "SpecError",
]


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""


class ConfigurationError(BrokerError):
    """Raised at start-up when configuration is unusable; the process refuses to start."""


class SpecError(ConfigurationError):
    """Raised when a declarative YAML file is invalid.

    Args:
        file: the file's path.
        line: 1-based line of the offending value, when known.
        key: dotted key path inside the file (``subscribe.events[0]``).
        reason: what is wrong and what was expected.
    """

    def __init__(self, file: str, line: int | None, key: str, reason: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.reason = reason
        where = f"{file}:{line}" if line else file
        msg = f"{where}: {key}: {reason}" if key else f"{where}: {reason}"
        super().__init__(msg)


class AdapterSpecError(SpecError):
    """Raised when an ``adapters/*.yaml`` registration is invalid."""


class MappingSpecError(SpecError):
    """Raised when a ``mappings/**.yaml`` file is invalid."""


class ServiceUnavailable(ConfigurationError):
    """Raised when a service the process needs (Redis) cannot be reached or started."""


class DataKeyError(ConfigurationError):
    """Raised when the data keys are missing or malformed, or a body names a key not configured.

    Carries ``key_id`` (the unknown key's id) when a stored body names one.
    """

    def __init__(self, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class SealedDataError(BrokerError):
    """Raised when a sealed body fails AES-GCM authentication: it was altered, truncated, or
    moved from the record it was sealed for. Never answered with the bytes it held."""


class MessageError(BrokerError):
    """Raised when one message is wrong. Never retried; the sender gets AE or AR.

    Attributes:
        ack_code: the HL7 acknowledgment code this error earns (``AE`` or ``AR``).
        hl7_error_code: HL7 table 0357 code for ERR-3 (v2.5+).
        location: where in the message the problem is (``MSH-9``), never the value.
    """

    ack_code = "AE"
    hl7_error_code = "207"  # 0357: application internal error

    def __init__(self, message: str, *, location: str | None = None) -> None:
        self.location = location
        super().__init__(message)


class ParseError(MessageError):
    """Raised when a message cannot be read at all."""

    hl7_error_code = "102"  # 0357: data type error


class HL7v2ParseError(ParseError):
    """Raised when bytes are not a readable HL7 v2 message (no MSH, bad encoding characters, …)."""


class FHIRParseError(ParseError):
    """Raised when a payload is not valid FHIR R4 JSON."""


class NoMappingError(MessageError):
    """Raised when no mapping handles this message type and version: answered AR."""

    ack_code = "AR"
    hl7_error_code = "200"  # 0357: unsupported message type


class MappingError(MessageError):
    """Raised when a mapping rule fails on a message at run time.

    Args:
        message: what went wrong.
        mapping: the mapping file.
        rule: the rule's id or target.
        source_path: the source path the rule read (``PID-7``).
    """

    def __init__(
        self, message: str, *, mapping: str, rule: str | None = None, source_path: str | None = None
    ) -> None:
        self.mapping = mapping
        self.rule = rule
        self.source_path = source_path
        super().__init__(message, location=source_path)


class CanonicalError(MessageError):
    """Raised when the mapped FHIR message Bundle is not valid FHIR R4 or breaks an invariant."""


class RejectedError(MessageError):
    """Raised when the edge refuses a frame before journalling it (size, two messages, …)."""

    ack_code = "AR"


class JournalError(BrokerError):
    """Raised when the journal cannot accept a message; the sender must retry later (AR/503)."""


class AccessError(BrokerError):
    """Raised when a change to users or tokens is refused: an unknown or duplicate user, a
    token narrower than nothing, a sender without its adapter. The message says what to do."""


class DeliveryError(BrokerError):
    """Raised when a subscriber did not confirm a delivery.

    Args:
        message: what happened.
        destination: the subscriber's adapter id.
        reply: what the receiver answered (ACK code and text, HTTP status and body), if anything.
    """

    def __init__(self, message: str, *, destination: str, reply: str | None = None) -> None:
        self.destination = destination
        self.reply = reply
        super().__init__(message)


class RetryableDeliveryError(DeliveryError):
    """Raised on a failure that may pass: timeout, refused connection, HTTP 5xx, MLLP AE/AR."""


class PermanentDeliveryError(DeliveryError):
    """Raised on a failure that will not pass by retrying: HTTP 4xx."""
