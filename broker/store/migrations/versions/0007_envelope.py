"""A message's envelope as Redis held it, sealed, instead of its Bundle serialised and sealed again.

Revision ID: 0007_envelope
Revises: 0006_passwords
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_envelope"
down_revision = "0006_passwords"
branch_labels = None
depends_on = None
CANONICAL_BEFORE = "the canonical FHIR R4 message Bundle (JSON)"
CANONICAL = "the canonical FHIR R4 message Bundle (JSON); rows written before 0007"


def upgrade() -> None:
    """Add ``messages.envelope``; rows written before keep their ``canonical``."""
    with op.batch_alter_table("messages") as batch:
        batch.alter_column(
            "canonical",
            existing_type=sa.Text(),
            comment=CANONICAL,
            existing_comment=CANONICAL_BEFORE,
        )
        batch.add_column(
            sa.Column(
                "envelope",
                sa.LargeBinary(),
                comment="the envelope (canonical Bundle and metadata, JSON) as Redis held it: "
                "sealed for the message id and field env",
            )
        )


def downgrade() -> None:
    """Drop ``messages.envelope`` (the Bundles of the rows written since go with it)."""
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("envelope")
        batch.alter_column(
            "canonical",
            existing_type=sa.Text(),
            comment=CANONICAL_BEFORE,
            existing_comment=CANONICAL,
        )
