"""The first schema: messages, identifiers, deliveries, attempts, actions.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the store's tables and their indexes."""
    op.create_table(
        "actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "record",
            sa.String(length=32),
            nullable=False,
            comment="the pl:store entry: makes it once",
        ),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("subscriber", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("who", sa.String(length=256), nullable=False),
        sa.Column("why", sa.Text(), nullable=False),
        sa.Column(
            "target", sa.String(length=64), nullable=True, comment="the dead letter acted on"
        ),
        sa.Column("at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_actions")),
        sa.UniqueConstraint("record", name=op.f("uq_actions_record")),
    )
    op.create_index(op.f("ix_actions_at"), "actions", ["at"], unique=False)
    op.create_index(op.f("ix_actions_message_id"), "actions", ["message_id"], unique=False)
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "record",
            sa.String(length=32),
            nullable=False,
            comment="the pl:store entry: makes it once",
        ),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("subscriber", sa.String(length=128), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.Column(
            "outcome", sa.String(length=16), nullable=False, comment="delivered, retrying, failed"
        ),
        sa.Column(
            "ack_code", sa.String(length=8), nullable=True, comment="MSA-1 of an HL7 v2 receiver"
        ),
        sa.Column("http_status", sa.Integer(), nullable=True, comment="a FHIR receiver's status"),
        sa.Column("reply", sa.Text(), nullable=True, comment="what the receiver said (bounded)"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "digest", sa.String(length=64), nullable=True, comment="SHA-256 of the payload sent"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempts")),
        sa.UniqueConstraint("record", name=op.f("uq_attempts_record")),
    )
    op.create_index(op.f("ix_attempts_at"), "attempts", ["at"], unique=False)
    op.create_index(
        op.f("ix_attempts_message_id_subscriber"),
        "attempts",
        ["message_id", "subscriber"],
        unique=False,
    )
    op.create_table(
        "deliveries",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("subscriber", sa.String(length=128), nullable=False),
        sa.Column(
            "state",
            sa.String(length=32),
            nullable=False,
            comment="queued, delivered, retrying, parked, dead_lettered, discarded, replayed, filtered",
        ),
        sa.Column(
            "reason",
            sa.Text(),
            nullable=True,
            comment="the last reason: a refusal, the filter's, an operator's",
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("dead_letter", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "subscriber", name=op.f("pk_deliveries")),
    )
    op.create_index(
        op.f("ix_deliveries_state_updated_at"), "deliveries", ["state", "updated_at"], unique=False
    )
    op.create_index(
        op.f("ix_deliveries_subscriber_state_updated_at"),
        "deliveries",
        ["subscriber", "state", "updated_at"],
        unique=False,
    )
    op.create_table(
        "identifiers",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column(
            "system", sa.String(length=512), nullable=False, comment="the FHIR identifier system"
        ),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column(
            "kind", sa.String(length=32), nullable=False, comment="CIN, IPP, INS or the type code"
        ),
        sa.PrimaryKeyConstraint("message_id", "system", "value", name=op.f("pk_identifiers")),
    )
    op.create_index(
        op.f("ix_identifiers_value_kind"), "identifiers", ["value", "kind"], unique=False
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.String(length=64), nullable=False, comment="the envelope id"),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.Column("adapter", sa.String(length=128), nullable=False, comment="the inbound adapter"),
        sa.Column("peer", sa.String(length=256), nullable=True),
        sa.Column("content_type", sa.String(length=64), nullable=True),
        sa.Column(
            "control_id",
            sa.String(length=256),
            nullable=True,
            comment="MSH-10; the Bundle id for FHIR input",
        ),
        sa.Column("sender", sa.String(length=512), nullable=True, comment="MSH-3^MSH-4"),
        sa.Column(
            "event",
            sa.String(length=64),
            nullable=True,
            comment="ADT^A01; Bundle or a resource type for FHIR",
        ),
        sa.Column("version", sa.String(length=16), nullable=True),
        sa.Column(
            "state",
            sa.String(length=32),
            nullable=False,
            comment="routed, filtered, failed, rejected",
        ),
        sa.Column("reason", sa.Text(), nullable=True, comment="why failed or rejected"),
        sa.Column(
            "partition_key",
            sa.String(length=512),
            nullable=True,
            comment="the patient identity that orders it",
        ),
        sa.Column("raw", sa.LargeBinary(), nullable=True, comment="the bytes received"),
        sa.Column(
            "canonical",
            sa.Text(),
            nullable=True,
            comment="the canonical FHIR R4 message Bundle (JSON)",
        ),
        sa.Column("mappings", sa.Text(), nullable=True, comment="JSON list of {id, sha256}"),
        sa.Column("findings", sa.Text(), nullable=True, comment="JSON list of quality findings"),
        sa.Column("unmapped", sa.Text(), nullable=True, comment="JSON list of fields no rule read"),
        sa.Column("ack", sa.Text(), nullable=True, comment="the ACK sent to the sender"),
        sa.Column("ack_code", sa.String(length=8), nullable=True),
        sa.Column("stored_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    op.create_index(
        op.f("ix_messages_adapter_received_at"),
        "messages",
        ["adapter", "received_at"],
        unique=False,
    )
    op.create_index(op.f("ix_messages_control_id"), "messages", ["control_id"], unique=False)
    op.create_index(
        op.f("ix_messages_event_received_at"), "messages", ["event", "received_at"], unique=False
    )
    op.create_index(op.f("ix_messages_received_at"), "messages", ["received_at"], unique=False)
    op.create_index(
        op.f("ix_messages_state_received_at"), "messages", ["state", "received_at"], unique=False
    )


def downgrade() -> None:
    """Drop them."""
    op.drop_index(op.f("ix_messages_state_received_at"), table_name="messages")
    op.drop_index(op.f("ix_messages_received_at"), table_name="messages")
    op.drop_index(op.f("ix_messages_event_received_at"), table_name="messages")
    op.drop_index(op.f("ix_messages_control_id"), table_name="messages")
    op.drop_index(op.f("ix_messages_adapter_received_at"), table_name="messages")
    op.drop_table("messages")
    op.drop_index(op.f("ix_identifiers_value_kind"), table_name="identifiers")
    op.drop_table("identifiers")
    op.drop_index(op.f("ix_deliveries_subscriber_state_updated_at"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_state_updated_at"), table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_index(op.f("ix_attempts_message_id_subscriber"), table_name="attempts")
    op.drop_index(op.f("ix_attempts_at"), table_name="attempts")
    op.drop_table("attempts")
    op.drop_index(op.f("ix_actions_message_id"), table_name="actions")
    op.drop_index(op.f("ix_actions_at"), table_name="actions")
    op.drop_table("actions")
