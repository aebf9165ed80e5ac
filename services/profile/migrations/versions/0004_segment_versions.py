"""Segment history: every put's definition, kept after the segment is deleted (what a segment meant when a report
or a decision log names it, and the versions to roll back to). Expand-only; the current definitions are copied in.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profile_segment_versions",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("expression", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="pk_profile_segment_versions"),
    )
    op.execute(
        "INSERT INTO profile_segment_versions (name, version, expression, description, updated_at) "
        "SELECT name, version, expression, description, updated_at FROM profile_segments"
    )


def downgrade() -> None:
    op.drop_table("profile_segment_versions")
