"""Identity lineage: aliases of merged customers, erased customer ids, and the cursor into identity's lineage
journal. Expand-only.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profile_aliases",
        sa.Column("merged_id", sa.String(128), nullable=False),
        sa.Column("survivor_id", sa.String(128), nullable=False),
        sa.Column("merge_id", sa.String(64), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("merged_id", name="pk_profile_aliases"),
        sa.UniqueConstraint("merge_id", name="uq_profile_aliases_merge_id"),
    )
    op.create_index("ix_profile_aliases_survivor_id", "profile_aliases", ["survivor_id"])
    op.create_table(
        "profile_erasures",
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name="pk_profile_erasures"),
    )
    cursor = op.create_table(
        "profile_lineage_cursor",
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", name="pk_profile_lineage_cursor"),
    )
    # The row every applied entry moves (the appliers' lock): it exists from the start.
    op.bulk_insert(cursor, [{"source": "identity", "seq": 0}])


def downgrade() -> None:
    op.drop_table("profile_lineage_cursor")
    op.drop_table("profile_erasures")
    op.drop_index("ix_profile_aliases_survivor_id", table_name="profile_aliases")
    op.drop_table("profile_aliases")
