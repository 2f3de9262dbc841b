"""The patient consent / opt-out registry, and the policy each delivery attempt was made under.

Revision ID: 0004_consent
Revises: 0003_auth
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_consent"
down_revision = "0003_auth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``consents``; add ``attempts.policy``."""
    op.create_table(
        "consents",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column(
            "system", sa.String(512), nullable=False, comment="the patient identifier's system"
        ),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("subscriber", sa.String(128), comment="the subscriber it applies to; empty: all"),
        sa.Column("action", sa.String(16), nullable=False, comment="block or restrict"),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("valid_from", sa.Double(), nullable=False),
        sa.Column("valid_until", sa.Double()),
        sa.Column("who", sa.String(256), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("revoked_at", sa.Double()),
        sa.Column("revoked_by", sa.String(256)),
        sa.PrimaryKeyConstraint("id", name="pk_consents"),
    )
    op.create_index("ix_consents_system_value", "consents", ["system", "value"])
    op.create_index("ix_consents_created_at", "consents", ["created_at"])
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(
            sa.Column(
                "policy",
                sa.String(160),
                nullable=True,
                comment="the data-sharing policy and purpose: policy-id/PURPOSE",
            )
        )


def downgrade() -> None:
    """Drop ``attempts.policy`` and ``consents``."""
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("policy")
    op.drop_index("ix_consents_created_at", "consents")
    op.drop_index("ix_consents_system_value", "consents")
    op.drop_table("consents")
