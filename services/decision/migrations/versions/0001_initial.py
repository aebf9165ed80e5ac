"""Decision log and outcome outbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decision_decisions",
        sa.Column("decision_id", sa.String(32), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("offers", sa.JSON, nullable=False),
        sa.Column("degraded", sa.Boolean, nullable=False),
        sa.Column("degraded_reasons", sa.JSON, nullable=False),
        sa.Column("catalogue_version", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("trace", sa.JSON, nullable=False),
    )
    op.create_index("ix_decision_decisions_customer_created", "decision_decisions", ["customer_id", "created_at"])
    op.create_index("ix_decision_decisions_created", "decision_decisions", ["created_at"])
    op.create_table(
        "decision_outcomes",
        sa.Column("outcome_id", sa.String(128), primary_key=True),
        sa.Column("decision_id", sa.String(32), sa.ForeignKey("decision_decisions.decision_id"), nullable=False),
        sa.Column("offer_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revenue", sa.Float, nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("forwarded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("forward_note", sa.Text, nullable=True),
    )
    op.create_index("ix_decision_outcomes_decision", "decision_outcomes", ["decision_id"])
    # The outbox scan reads only unforwarded rows; a partial index keeps it small as outcomes accumulate.
    pending = sa.text("forwarded_at IS NULL")
    op.create_index(
        "ix_decision_outcomes_pending",
        "decision_outcomes",
        ["recorded_at"],
        sqlite_where=pending,
        postgresql_where=pending,
    )


def downgrade() -> None:
    op.drop_table("decision_outcomes")
    op.drop_table("decision_decisions")
