"""Segments: versioned definitions (CEL expressions over traits) and their members with "since".

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profile_segments",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("expression", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_profile_segments"),
    )
    op.create_table(
        "profile_segment_members",
        sa.Column("segment", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("segment", "customer_id", name="pk_profile_segment_members"),
    )


def downgrade() -> None:
    op.drop_table("profile_segment_members")
    op.drop_table("profile_segments")
