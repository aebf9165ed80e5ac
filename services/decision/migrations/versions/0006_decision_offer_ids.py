"""The ids of the offers each decision returned, in a narrow column, for the contact-policy counts.

Counting a customer's impressions used to expand every decision's `offers` JSON (rank, score, reason codes…) in the
database; the ids alone are a fraction of it (half the query's time for a customer with a thousand decisions).

Expand-only, and cheap: a nullable column, not backfilled (rewriting the whole decision log would be the costly
part). Decisions without it — logged before this revision, or by a service still on 0005 — are counted from their
`offers` (see `_CONTACTS` in storage.py), and they leave the contact policies' look-back window within days.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("decision_decisions", sa.Column("offer_ids", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decision_decisions") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("offer_ids")
