"""How long each decision took, for the report's latency percentiles.

Expand-only: a nullable column, so a service still on 0003 keeps writing decisions (without latency) and decisions
logged before this revision are left out of the percentiles.

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
    op.add_column("decision_decisions", sa.Column("latency_ms", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decision_decisions") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("latency_ms")
