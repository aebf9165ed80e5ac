"""The lineage journal: merges, unmerges and erasures in commit order, for followers (ListLineage). Expand-only.

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
        "identity_lineage",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("merge_id", sa.String(32), nullable=True),
        sa.Column("survivor_id", sa.String(32), nullable=True),
        sa.Column("merged_id", sa.String(32), nullable=True),
        sa.Column("customer_id", sa.String(32), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_identity_lineage"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("identity_lineage")
