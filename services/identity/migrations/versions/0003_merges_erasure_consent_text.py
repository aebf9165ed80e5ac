"""Merge and erasure audits, customer states (merged into, forgotten), and the consent text/version.

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
    op.add_column("identity_customers", sa.Column("merged_into", sa.String(32), nullable=True))
    op.add_column("identity_customers", sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "identity_consents", sa.Column("text_version", sa.String(128), nullable=False, server_default="")
    )
    op.create_table(
        "identity_merges",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("survivor_id", sa.String(32), nullable=False),
        sa.Column("merged_id", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("moved", sa.JSON(), nullable=False),
        sa.Column("unmerged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("unmerge_actor", sa.String(128), nullable=True),
        sa.Column("unmerge_reason", sa.String(512), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_identity_merges"),
    )
    op.create_index("ix_identity_merges_survivor_id", "identity_merges", ["survivor_id"])
    op.create_index("ix_identity_merges_merged_id", "identity_merges", ["merged_id"])
    op.create_table(
        "identity_erasures",
        sa.Column("customer_id", sa.String(32), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("identifiers", sa.Integer(), nullable=False),
        sa.Column("trait_records", sa.Integer(), nullable=False),
        sa.Column("consents", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name="pk_identity_erasures"),
    )


def downgrade() -> None:
    op.drop_table("identity_erasures")
    op.drop_index("ix_identity_merges_merged_id", table_name="identity_merges")
    op.drop_index("ix_identity_merges_survivor_id", table_name="identity_merges")
    op.drop_table("identity_merges")
    with op.batch_alter_table("identity_consents") as batch:
        batch.drop_column("text_version")
    with op.batch_alter_table("identity_customers") as batch:
        batch.drop_column("forgotten_at")
        batch.drop_column("merged_into")
