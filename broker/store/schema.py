"""The message store's tables (SQLAlchemy Core): one message's whole life, searchable.

Times are epoch seconds (``Double``): one representation on SQLite and PostgreSQL, sortable and
compared as numbers, and what the Redis records already carry. Rows of ``deliveries``,
``attempts`` and ``actions`` name their message without a foreign key on purpose: a record may
arrive for a message the store never saw (sent before the store existed, or already purged), and
retention purges each kind by its own age.

The migrations (``broker/store/migrations``) must produce exactly this schema:
``tests/store/test_migrations.py`` compares them on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "actions",
    "attempts",
    "audit",
    "consents",
    "deliveries",
    "identifiers",
    "messages",
    "metadata",
    "tokens",
    "users",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(64), primary_key=True, comment="the envelope id"),
    Column("received_at", Double, nullable=False),
    Column("adapter", String(128), nullable=False, comment="the inbound adapter"),
    Column("peer", String(256)),
    Column("content_type", String(64)),
    Column("control_id", String(256), comment="MSH-10; the Bundle id for FHIR input"),
    Column("sender", String(512), comment="MSH-3^MSH-4"),
    Column("event", String(64), comment="ADT^A01; Bundle or a resource type for FHIR"),
    Column("version", String(16)),
    Column("state", String(32), nullable=False, comment="routed, filtered, failed, rejected"),
    Column("reason", Text, comment="why failed or rejected"),
    Column("partition_key", String(512), comment="the patient identity that orders it"),
    Column(
        "partition", Integer, comment="the patient partition of its journal and delivery streams"
    ),
    Column("raw", LargeBinary, comment="the bytes received"),
    Column(
        "canonical",
        Text,
        comment="the canonical FHIR R4 message Bundle (JSON); rows written before 0007",
    ),
    Column("mappings", Text, comment="JSON list of {id, sha256}"),
    Column("findings", Text, comment="JSON list of quality findings"),
    Column("unmapped", Text, comment="JSON list of fields no rule read"),
    Column("ack", Text, comment="the ACK sent to the sender"),
    Column("ack_code", String(8)),
    Column("stored_at", Double, nullable=False),
    Column("edit_of", String(64), comment="the message this one corrects (an operator's edit)"),
    Column("edit", Text, comment="JSON: who, why and the diff from the original (patient data)"),
    Column(
        "envelope",
        LargeBinary,
        comment="the envelope (canonical Bundle and metadata, JSON) as Redis held it: "
        "sealed for the message id and field env",
    ),
    Index(None, "received_at"),
    Index(None, "control_id"),
    Index(None, "adapter", "received_at"),
    Index(None, "event", "received_at"),
    Index(None, "state", "received_at"),
    Index(None, "edit_of"),
)

identifiers = Table(
    "identifiers",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("system", String(512), primary_key=True, comment="the FHIR identifier system"),
    Column("value", String(256), primary_key=True),
    Column("kind", String(32), nullable=False, comment="CIN, IPP, INS or the type code"),
    Index(None, "value", "kind"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("subscriber", String(128), primary_key=True),
    Column(
        "state",
        String(32),
        nullable=False,
        comment="queued, delivered, retrying, parked, dead_lettered, discarded, replayed, filtered",
    ),
    Column("reason", Text, comment="the last reason: a refusal, the filter's, an operator's"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("dead_letter", String(64)),
    Column("updated_at", Double, nullable=False),
    Index(None, "subscriber", "state", "updated_at"),
    Index(None, "state", "updated_at"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("record", String(32), nullable=False, comment="the pl:store entry: makes it once"),
    Column("message_id", String(64), nullable=False),
    Column("subscriber", String(128), nullable=False),
    Column("at", Double, nullable=False),
    Column("duration_ms", Double, nullable=False),
    Column("outcome", String(16), nullable=False, comment="delivered, retrying, failed"),
    Column("ack_code", String(8), comment="MSA-1 of an HL7 v2 receiver"),
    Column("http_status", Integer, comment="a FHIR receiver's status"),
    Column("reply", Text, comment="what the receiver said (bounded)"),
    Column("error", Text),
    Column("digest", String(64), comment="SHA-256 of the payload sent"),
    Column("policy", String(160), comment="the data-sharing policy and purpose: policy-id/PURPOSE"),
    UniqueConstraint("record"),
    Index(None, "message_id", "subscriber"),
    Index(None, "at"),
)

actions = Table(
    "actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("record", String(32), nullable=False, comment="the pl:store entry: makes it once"),
    Column("message_id", String(64), nullable=False),
    Column("subscriber", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("who", String(256), nullable=False),
    Column("why", Text, nullable=False),
    Column("target", String(64), comment="the dead letter acted on"),
    Column("at", Double, nullable=False),
    UniqueConstraint("record"),
    Index(None, "message_id"),
    Index(None, "at"),
)

users = Table(
    "users",
    metadata,
    Column("name", String(128), primary_key=True, comment="a person's login or a system's name"),
    Column(
        "role", String(32), nullable=False, comment="admin, integrator, operator, auditor, sender"
    ),
    Column("adapter", String(128), comment="a sender's inbound adapter: it posts only as it"),
    Column("active", Boolean, nullable=False, comment="false: every token of the user is refused"),
    Column("created_at", Double, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("updated_at", Double, nullable=False),
    Column(
        "password_hash",
        String(256),
        comment="Argon2id PHC string (parameters, salt, hash); null: no password",
    ),
    Column(
        "password_id",
        String(32),
        comment="names the sessions the password opened; new at each change",
    ),
    Column("password_changed_at", Double),
    UniqueConstraint("password_id"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True, comment="public: printed in the token and lists"),
    Column("user_name", String(128), nullable=False),
    Column("label", String(128), comment="what the token is for (a host, a scraper)"),
    Column("digest", String(64), nullable=False, comment="SHA-256 of the token; never the token"),
    Column(
        "permissions", Text, comment="space-separated: narrower than the role; null: the role's"
    ),
    Column("created_at", Double, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("expires_at", Double, comment="null: never"),
    Column("revoked_at", Double),
    Column("revoked_by", String(256)),
    Column("last_used_at", Double, comment="to the minute"),
    UniqueConstraint("digest"),
    Index(None, "user_name"),
)


consents = Table(
    "consents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("system", String(512), nullable=False, comment="the patient identifier's system"),
    Column("value", String(256), nullable=False),
    Column("subscriber", String(128), comment="the subscriber it applies to; empty: all"),
    Column("action", String(16), nullable=False, comment="block or restrict"),
    Column("reason", Text, nullable=False),
    Column("valid_from", Double, nullable=False),
    Column("valid_until", Double),
    Column("who", String(256), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double),
    Column("revoked_by", String(256)),
    Index(None, "system", "value"),
    Index(None, "created_at"),
)


audit = Table(
    "audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False, comment="1, 2, 3… no gaps"),
    Column("record", String(48), nullable=False, comment="the pl:store entry it came from"),
    Column("at", Double, nullable=False),
    Column("actor", String(256), nullable=False, comment="who: a user, a token, a process"),
    Column("action", String(64), nullable=False),
    Column("targets", Text, nullable=False, comment="JSON: envelope, subscriber, patient ref…"),
    Column("reason", Text, nullable=False, comment="the purpose or reason given"),
    Column("details", Text, nullable=False, comment="JSON: ids and digests, never content"),
    Column("prev", String(64), nullable=False, comment="the previous entry's hash"),
    Column("hash", String(64), nullable=False, comment="HMAC-SHA256(key, prev + entry)"),
    UniqueConstraint("record"),
    Index(None, "at"),
    Index(None, "action", "at"),
)
"""The audit trail (``broker.audit``): append-only, hash-chained; one writer appends."""
