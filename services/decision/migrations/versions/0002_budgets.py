"""Budget caps: accepted outcomes and spend per offer.

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
        "decision_budgets",
        sa.Column("offer_id", sa.String(128), primary_key=True),
        sa.Column("accepts", sa.Integer, nullable=False),
        sa.Column("spend", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("decision_budgets")
