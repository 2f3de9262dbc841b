"""The audit trail: an append-only, hash-chained table the store's writer appends to.

Revision ID: 0003_audit
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_audit"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``audit`` (see ``broker.store.schema.audit``)."""
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
    """Drop ``audit``."""
    op.drop_index("ix_audit_action_at", table_name="audit")
    op.drop_index("ix_audit_at", table_name="audit")
    op.drop_table("audit")
