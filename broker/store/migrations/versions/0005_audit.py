"""The audit trail: an append-only, hash-chained table the store's writer appends to; and the
link of an edited message to the one it corrects (``messages.edit_of``, ``messages.edit``).

Revision ID: 0005_audit
Revises: 0004_consent
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_audit"
down_revision = "0004_consent"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``audit`` (see ``broker.store.schema.audit``); add the edit link to ``messages``."""
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column(
                "edit_of",
                sa.String(64),
                nullable=True,
                comment="the message this one corrects (an operator's edit)",
            )
        )
        batch.add_column(
            sa.Column(
                "edit",
                sa.Text(),
                nullable=True,
                comment="JSON: who, why and the diff from the original (patient data)",
            )
        )
        batch.create_index("ix_messages_edit_of", ["edit_of"])
    op.create_table(
        "audit",
        sa.Column(
            "seq", sa.Integer(), autoincrement=False, nullable=False, comment="1, 2, 3… no gaps"
        ),
        sa.Column(
            "record", sa.String(48), nullable=False, comment="the pl:store entry it came from"
        ),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column(
            "actor",
            sa.String(256),
            nullable=False,
            comment="who: a user, a token, a process",
        ),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column(
            "targets",
            sa.Text(),
            nullable=False,
            comment="JSON: envelope, subscriber, patient ref…",
        ),
        sa.Column("reason", sa.Text(), nullable=False, comment="the purpose or reason given"),
        sa.Column(
            "details",
            sa.Text(),
            nullable=False,
            comment="JSON: ids and digests, never content",
        ),
        sa.Column("prev", sa.String(64), nullable=False, comment="the previous entry's hash"),
        sa.Column(
            "hash",
            sa.String(64),
            nullable=False,
            comment="HMAC-SHA256(key, prev + entry)",
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_audit"),
        sa.UniqueConstraint("record", name="uq_audit_record"),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_action_at", "audit", ["action", "at"])


def downgrade() -> None:
    """Drop ``audit`` and the edit link."""
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_edit_of")
        batch.drop_column("edit")
        batch.drop_column("edit_of")
    op.drop_index("ix_audit_action_at", table_name="audit")
    op.drop_index("ix_audit_at", table_name="audit")
    op.drop_table("audit")
