"""Identity tables: customers, their identifiers (unique per type and value) and the consent history.

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
        "identity_customers",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_identity_customers"),
    )
    op.create_table(
        "identity_identifiers",
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("value", sa.String(320), nullable=False),
        sa.Column("customer_id", sa.String(32), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("type", "value", name="pk_identity_identifiers"),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["identity_customers.id"], name="fk_identity_identifiers_customer_id"
        ),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_identity_identifiers_customer_id", "identity_identifiers", ["customer_id"])
    op.create_table(
        "identity_consents",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_identity_consents"),
        sa.ForeignKeyConstraint(["customer_id"], ["identity_customers.id"], name="fk_identity_consents_customer_id"),
    )
    op.create_index(
        "ix_identity_consents_current",
        "identity_consents",
        ["customer_id", "purpose", "channel", "recorded_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_identity_consents_current", table_name="identity_consents")
    op.drop_table("identity_consents")
    op.drop_index("ix_identity_identifiers_customer_id", table_name="identity_identifiers")
    op.drop_table("identity_identifiers")
    op.drop_table("identity_customers")
