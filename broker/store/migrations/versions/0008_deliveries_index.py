"""Drop ``ix_deliveries_subscriber_state_updated_at``: no query reads by it, and the store's
writer paid for it on every delivery row (~3 µs a message of ~0.17 ms on SQLite).

A search by subscriber and state probes ``deliveries`` by its primary key (message id,
subscriber) from each message, or starts from ``ix_deliveries_state_updated_at``.

Revision ID: 0008_deliveries_index
Revises: 0007_envelope
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0008_deliveries_index"
down_revision = "0007_envelope"
branch_labels = None
depends_on = None
INDEX = "ix_deliveries_subscriber_state_updated_at"


def upgrade() -> None:
    """Drop the index."""
    op.drop_index(INDEX, table_name="deliveries")


def downgrade() -> None:
    """Create it again."""
    op.create_index(INDEX, "deliveries", ["subscriber", "state", "updated_at"], unique=False)
