"""The customer's profile segments at decision time, for the report's per-segment rows.

Expand-only: a nullable column, so a service still on 0002 keeps writing decisions (without segments) and
decisions logged before this revision simply count under "no segment".

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
    op.add_column("decision_decisions", sa.Column("segments", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decision_decisions") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("segments")
