"""Person-trait records per customer (with one indexed blocking-key column per rule) and estimated match models.

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

_BLOCKING_KEYS = ("bk_postcode_initials", "bk_dob", "bk_names", "bk_phone")


def upgrade() -> None:
    op.create_table(
        "identity_trait_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(32), nullable=False),
        sa.Column("given_name", sa.String(128), nullable=False),
        sa.Column("surname", sa.String(128), nullable=False),
        sa.Column("date_of_birth", sa.String(8), nullable=False),
        sa.Column("street_number", sa.String(32), nullable=False),
        sa.Column("address_line", sa.String(128), nullable=False),
        sa.Column("city", sa.String(128), nullable=False),
        sa.Column("postcode", sa.String(32), nullable=False),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("phone", sa.String(16), nullable=False),
        sa.Column("bk_postcode_initials", sa.String(64), nullable=True),
        sa.Column("bk_dob", sa.String(8), nullable=True),
        sa.Column("bk_names", sa.String(16), nullable=True),
        sa.Column("bk_phone", sa.String(16), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_identity_trait_records"),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["identity_customers.id"], name="fk_identity_trait_records_customer_id"
        ),
    )
    op.create_index("ix_identity_trait_records_customer_id", "identity_trait_records", ["customer_id"])
    for column in _BLOCKING_KEYS:
        op.create_index(f"ix_identity_trait_records_{column}", "identity_trait_records", [column])
    op.create_table(
        "identity_match_models",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("fitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fitted_on", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_identity_match_models"),
    )


def downgrade() -> None:
    op.drop_table("identity_match_models")
    for column in _BLOCKING_KEYS:
        op.drop_index(f"ix_identity_trait_records_{column}", table_name="identity_trait_records")
    op.drop_index("ix_identity_trait_records_customer_id", table_name="identity_trait_records")
    op.drop_table("identity_trait_records")
