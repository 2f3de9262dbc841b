"""A message's journal partition, so a resend rebuilt from the store goes to the same queue.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``messages.partition`` (empty for the messages stored before)."""
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column(
                "partition",
                sa.Integer(),
                nullable=True,
                comment="the patient partition of its journal and delivery streams",
            )
        )


def downgrade() -> None:
    """Drop ``messages.partition``."""
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("partition")
