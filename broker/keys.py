"""Redis key names: the one place that knows how the journal, queues and records are laid out.

Layout (``P`` is a patient partition number, ``SUB`` a subscriber's adapter id)::

    pl:in:P              stream   raw inbound messages (the journal; ``raw`` sealed for the envelope id,
                                  broker.sealing); group ``pipeline``
    pl:out:SUB:P         stream   canonical envelope ids queued for one subscriber; group ``deliver``
    pl:env:ID            string   an Envelope as JSON, sealed (broker.sealing), while in flight: dropped by the store's writer once
                                  the store holds the message, final for every subscriber (else the
                                  retention TTL)
    pl:dedupe:B:SHARD    hash     dedupe records of the messages received in time bucket B (Redis
                                  clock // bucket length, a quarter of the dedupe window): field = 16
                                  bytes of SHA-256(receiving adapter, (MSH-3, MSH-4, MSH-10) for HL7 v2
                                  or the normalised content for FHIR), SHARD = its first 4 hex digits;
                                  value = the envelope id (14 bytes); expires with its last record's
                                  window (broker.intake.journal)
    pl:dedupe:SRC:HASH   string   before bucketed records: the reply sent for one message of adapter
                                  SRC (read, never written, for one dedupe window after the upgrade)
    pl:rejected          stream   input refused at the edge, with its reason and its bytes (sealed for
                                  the entry's ``id`` field: broker.sealing); kept retention_rejected_s
    pl:quarantine        stream   journalled messages that failed parse/map/validation (ids and reasons;
                                  kept retention_quarantine_s)
    pl:dead:SUB          stream   the history of a subscriber's dead letters (one entry each, never edited)
    pl:dl:SUB            hash     dead-letter id → JSON record with its current status
    pl:dlopen:SUB        set      the ids of SUB's open dead letters (kept with each status change)
    pl:dlopen:indexed    string   the open index was built from the records once (upgrade)
    pl:held:SUB          hash     patient key → the dead-letter id that holds that patient's messages
    pl:parked:SUB:PK     stream   a held patient's messages for SUB, in order, the failed one first
    pl:audit             stream   before the audit trail (broker.audit): operator actions; no longer written
    pl:audit:head        hash     the audit chain's head (seq, hash, at), set by the store's writer with
                                  each batch: a deleted tail is noticed (broker.audit.anchor)
    pl:acks:SRC          stream   enhanced-mode application ACKs to send to an inbound adapter
    pl:unmapped:SRC      hash     field → messages from SRC in which no rule read it (and __messages__)
    pl:adapter:SRC       hash     per inbound adapter: received, refused:CODE (AE, AR, 4xx), last_ms,
                                  failed (quarantined by the pipeline: parse, mapping or validation),
                                  connection_refused:REASON (not_allowed, connection_cap, tls_handshake)
    pl:latency:SUB       hash     end-to-end latency histogram of SUB: le:BOUND and +Inf counts, sum, count
    pl:listening:SRC     string   host:port of inbound adapter SRC's MLLP listener while its process runs
                                  (a heartbeat, expiring: broker.listen)
    pl:peers:SRC         string   how many peers hold a connection to SRC's MLLP listener (renewed and
                                  expiring with pl:listening:SRC)
    pl:incidents         hash     open alert incidents (broker.ops.alerts): RULE:SUBJECT → JSON
    pl:alert:since       hash     RULE:SUBJECT → epoch s since which the rule's condition holds
    pl:alert:windows     hash     inbound adapter → its counters at the start of the error-rate window
    pl:attempts:SUB      hash     STREAM|ENTRY-ID (attempt_entry) → JSON list of delivery attempts
    pl:hold:SUB:P        string   epoch seconds before which partition P of SUB is not retried
    pl:lock:STREAM       string   the one drainer of STREAM (token, expiring)
    pl:kick:STREAM       string   a drain task for STREAM is already queued
    pl:stats             hash     counters: received, rejected, delivered:SUB, failed:SUB, …
    pl:trimmed           string   the retention trim ran within the last minute
    pl:purged            string   the purge of rejected, quarantine and dead letters ran within ten
                                  minutes (broker.ops.retention)
    pl:pressure          string   why the listeners answer AR "retry later" now (expires by itself)
    pl:rates             list     recent samples of the counters and backlogs, newest first (capped, TTL)
    pl:timings           stream   per-hop timestamps, only with PASSERELLE_TIMINGS on (broker.timing; capped)
    pl:standby           zset     workers waiting for a journal partition to drain → expiry (broker.standby)
    pl:wake              list     journal partitions handed to those waiting workers, oldest first
    pl:store             stream   what happened to each message, for the message store's writer
                                  (broker.trail); group ``store``, emptied as the writer commits
    pl:reopened          hash     envelope id → operator re-queues (resend, replay) the writer has not
                                  stored yet: its envelope stays meanwhile (broker.trail.state)
    pl:stored            hash     journal partition → the last entry whose message the store holds
                                  (housekeeping trims the journal up to it)
    pl:login:fail:user:H string   failed password logins of one user name (H: part of its SHA-256),
    pl:login:fail:peer:H          and of one client address; expiring (broker.throttle)
    pl:login:lock:user:H string   present while that name (or address) is locked out; its TTL is
    pl:login:lock:peer:H          what is left of the lockout (broker.throttle)
"""

from __future__ import annotations

__all__ = [
    "ALERT_SINCE",
    "ALERT_WINDOWS",
    "ATTEMPTS",
    "AUDIT",
    "AUDIT_HEAD",
    "CONNECTION_REFUSED",
    "DEAD_OPEN_INDEXED",
    "DEDUPE",
    "DELIVER_GROUP",
    "INCIDENTS",
    "PIPELINE_GROUP",
    "PRESSURE",
    "PURGED",
    "QUARANTINE",
    "RATES",
    "REJECTED",
    "REOPENED",
    "STANDBY",
    "STATS",
    "STORE",
    "STORED",
    "STORE_GROUP",
    "TIMINGS",
    "TRIMMED",
    "WAKE",
    "adapter_stats",
    "app_acks",
    "attempt_entry",
    "dead",
    "dead_open",
    "dead_records",
    "dedupe",
    "envelope",
    "held",
    "hold",
    "inbound",
    "kick",
    "latency",
    "legacy_dedupe",
    "listening",
    "lock",
    "outbound",
    "parked",
    "partition_of",
    "peers",
    "unmapped",
]

import zlib

PIPELINE_GROUP = "pipeline"
DELIVER_GROUP = "deliver"
REJECTED = "pl:rejected"
QUARANTINE = "pl:quarantine"
STATS = "pl:stats"
AUDIT = "pl:audit"
AUDIT_HEAD = "pl:audit:head"
TRIMMED = "pl:trimmed"
PURGED = "pl:purged"
PRESSURE = "pl:pressure"
RATES = "pl:rates"
TIMINGS = "pl:timings"
STANDBY = "pl:standby"
WAKE = "pl:wake"
STORE = "pl:store"
STORE_GROUP = "store"
REOPENED = "pl:reopened"
STORED = "pl:stored"
ATTEMPTS = "pl:attempts:"
DEAD_OPEN_INDEXED = "pl:dlopen:indexed"
DEDUPE = "pl:dedupe:"
"""Prefix of the dedupe buckets (``dedupe``); the journal's script builds their names from it."""
INCIDENTS = "pl:incidents"
ALERT_SINCE = "pl:alert:since"
ALERT_WINDOWS = "pl:alert:windows"


def partition_of(key: str, partitions: int) -> int:
    """Return the partition of a patient identity: stable across processes and restarts."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def inbound(partition: int) -> str:
    """Journal stream of one partition."""
    return f"pl:in:{partition}"


def outbound(subscriber: str, partition: int) -> str:
    """Delivery stream of one subscriber's partition."""
    return f"pl:out:{subscriber}:{partition}"


def envelope(envelope_id: str) -> str:
    """Where an Envelope's JSON is kept."""
    return f"pl:env:{envelope_id}"


def dedupe(bucket: int, shard: str) -> str:
    """One shard of one time bucket of dedupe records (``broker.intake.journal.dedupe_slot``).

    The receiving adapter is hashed into each record's field, not named in the key: two hospitals
    may use the same MSH-3/4/10, and one's message is never taken for a resend of the other's.
    """
    return f"{DEDUPE}{bucket}:{shard}"


def legacy_dedupe(source: str, digest: str) -> str:
    """The reply stored for one message of adapter ``source`` before the bucketed records.

    Read, never written, so that a resend of a message received before the upgrade is still a
    duplicate; such keys expire within one dedupe window of the upgrade. The version before that
    (``pl:dedupe:HASH``, without the adapter) is not read.
    """
    return f"{DEDUPE}{source}:{digest}"


def dead(subscriber: str) -> str:
    """Dead-letter stream of one subscriber."""
    return f"pl:dead:{subscriber}"


def app_acks(source: str) -> str:
    """Application ACKs waiting to be sent back to an enhanced-mode inbound adapter."""
    return f"pl:acks:{source}"


CONNECTION_REFUSED = "connection_refused:"
"""Prefix of the ``pl:adapter:SRC`` fields counting connections refused, by reason."""


def adapter_stats(source: str) -> str:
    """Per inbound adapter: messages received, refused per ACK code or HTTP status, last time."""
    return f"pl:adapter:{source}"


def unmapped(source: str) -> str:
    """Per inbound adapter: how often each field arrived without any rule reading it."""
    return f"pl:unmapped:{source}"


def dead_records(subscriber: str) -> str:
    """Dead-letter records of one subscriber, by id."""
    return f"pl:dl:{subscriber}"


def held(subscriber: str) -> str:
    """Patients whose messages are held for one subscriber, with the dead letter holding them."""
    return f"pl:held:{subscriber}"


def parked(subscriber: str, patient: str) -> str:
    """One held patient's messages for one subscriber, in arrival order."""
    return f"pl:parked:{subscriber}:{patient}"


def hold(subscriber: str, partition: int) -> str:
    """Retry-after mark of one subscriber partition."""
    return f"pl:hold:{subscriber}:{partition}"


def attempt_entry(stream: str, entry_id: str) -> str:
    """The field of a queue entry's delivery attempts in ``pl:attempts:SUB``.

    Named by its stream too: an entry id is unique in its stream only. Two partitions of one
    subscriber appended to in the same millisecond (two journal drains committing together)
    give their entries the same ids, and attempts kept by id alone were counted for both.
    """
    return f"{stream}|{entry_id}"


def lock(stream: str) -> str:
    """Drainer lock of a stream."""
    return f"pl:lock:{stream}"


def kick(stream: str) -> str:
    """Marker that a drain task for the stream is queued."""
    return f"pl:kick:{stream}"


def dead_open(subscriber: str) -> str:
    """The set of ``subscriber``'s open dead letters' ids."""
    return f"pl:dlopen:{subscriber}"


def latency(subscriber: str) -> str:
    """The end-to-end latency histogram of ``subscriber`` (``broker.latency``)."""
    return f"pl:latency:{subscriber}"


def listening(source: str) -> str:
    """The heartbeat of inbound adapter ``source``'s MLLP listener."""
    return f"pl:listening:{source}"


def peers(source: str) -> str:
    """How many peers are connected to inbound adapter ``source``'s MLLP listener."""
    return f"pl:peers:{source}"
