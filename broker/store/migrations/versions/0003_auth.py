"""Users and API tokens: who may use the API and the console, each with a role.

Revision ID: 0003_auth
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_auth"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``users`` and ``tokens`` (tokens are kept as their SHA-256 only)."""
    op.create_table(
        "users",
        sa.Column(
            "name",
            sa.String(128),
            primary_key=True,
            comment="a person's login or a system's name",
        ),
        sa.Column(
            "role",
            sa.String(32),
            nullable=False,
            comment="admin, integrator, operator, auditor, sender",
        ),
        sa.Column(
            "adapter", sa.String(128), comment="a sender's inbound adapter: it posts only as it"
        ),
        sa.Column(
            "active",
            sa.Boolean(),
            nullable=False,
            comment="false: every token of the user is refused",
        ),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_users"),
    )
    op.create_table(
        "tokens",
        sa.Column(
            "id", sa.String(32), primary_key=True, comment="public: printed in the token and lists"
        ),
        sa.Column("user_name", sa.String(128), nullable=False),
        sa.Column("label", sa.String(128), comment="what the token is for (a host, a scraper)"),
        sa.Column(
            "digest",
            sa.String(64),
            nullable=False,
            comment="SHA-256 of the token; never the token",
        ),
        sa.Column(
            "permissions",
            sa.Text(),
            comment="space-separated: narrower than the role; null: the role's",
        ),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("expires_at", sa.Double(), comment="null: never"),
        sa.Column("revoked_at", sa.Double()),
        sa.Column("revoked_by", sa.String(256)),
        sa.Column("last_used_at", sa.Double(), comment="to the minute"),
        sa.PrimaryKeyConstraint("id", name="pk_tokens"),
        sa.UniqueConstraint("digest", name="uq_tokens_digest"),
    )
    op.create_index("ix_tokens_user_name", "tokens", ["user_name"])


def downgrade() -> None:
    """Drop ``tokens`` and ``users`` (every stored credential is lost; the bootstrap token stays)."""
    op.drop_index("ix_tokens_user_name", table_name="tokens")
    op.drop_table("tokens")
    op.drop_table("users")
