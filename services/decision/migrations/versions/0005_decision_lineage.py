"""Identity lineage in the decision log: aliases of merged customers and the cursor into identity's lineage
journal, so that a Forget pseudonymises the decisions and outcomes of the customer and of those merged into it.

Expand-only: two new tables, which a service still on 0004 never reads.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decision_aliases",
        sa.Column("merged_id", sa.String(128), nullable=False),
        sa.Column("survivor_id", sa.String(128), nullable=False),
        sa.Column("merge_id", sa.String(64), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("merged_id", name="pk_decision_aliases"),
        sa.UniqueConstraint("merge_id", name="uq_decision_aliases_merge_id"),
    )
    op.create_index("ix_decision_aliases_survivor_id", "decision_aliases", ["survivor_id"])
    cursor = op.create_table(
        "decision_lineage_cursor",
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", name="pk_decision_lineage_cursor"),
    )
    # The row every applied entry moves (the followers' lock): it exists from the start. At 0 the follower reads
    # the whole journal, so erasures made before this revision reach the log kept until then too.
    op.bulk_insert(cursor, [{"source": "identity", "seq": 0}])


def downgrade() -> None:
    op.drop_table("decision_lineage_cursor")
    op.drop_index("ix_decision_aliases_survivor_id", table_name="decision_aliases")
    op.drop_table("decision_aliases")
