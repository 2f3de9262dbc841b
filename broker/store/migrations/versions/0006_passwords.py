"""People's passwords: an Argon2id hash per user, and the id of the sessions it opened.

Revision ID: 0006_passwords
Revises: 0005_audit
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_passwords"
down_revision = "0005_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``password_hash``, ``password_id`` and ``password_changed_at`` to ``users``."""
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column(
                "password_hash",
                sa.String(256),
                comment="Argon2id PHC string (parameters, salt, hash); null: no password",
            )
        )
        batch.add_column(
            sa.Column(
                "password_id",
                sa.String(32),
                comment="names the sessions the password opened; new at each change",
            )
        )
        batch.add_column(sa.Column("password_changed_at", sa.Double()))
        batch.create_unique_constraint("uq_users_password_id", ["password_id"])


def downgrade() -> None:
    """Drop the password columns (people log in with their tokens again)."""
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_password_id", type_="unique")
        batch.drop_column("password_changed_at")
        batch.drop_column("password_id")
        batch.drop_column("password_hash")
