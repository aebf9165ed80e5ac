"""Inventory tables: locations, SKU variants, stock per (variant, location), applied update ids.

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
        "inventory_locations",
        sa.Column("location_id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.CheckConstraint("kind IN ('store', 'warehouse')", name="ck_inventory_locations_kind"),
    )
    op.create_table(
        "inventory_variants",
        sa.Column("sku", sa.String(), primary_key=True),
        sa.Column("product_id", sa.String(), nullable=False),
        sa.Column("size", sa.String(), nullable=False, server_default=""),
        sa.Column("colour", sa.String(), nullable=False, server_default=""),
    )
    op.create_index("ix_inventory_variants_product_id", "inventory_variants", ["product_id"])
    op.create_table(
        "inventory_stock",
        sa.Column("sku", sa.String(), sa.ForeignKey("inventory_variants.sku"), nullable=False),
        sa.Column("location_id", sa.String(), sa.ForeignKey("inventory_locations.location_id"), nullable=False),
        sa.Column("on_hand", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sku", "location_id", name="pk_inventory_stock"),
        sa.CheckConstraint("on_hand >= 0", name="ck_inventory_stock_on_hand"),
    )
    op.create_table(
        "inventory_updates",
        sa.Column("update_id", sa.String(), primary_key=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inventory_updates")
    op.drop_table("inventory_stock")
    op.drop_index("ix_inventory_variants_product_id", table_name="inventory_variants")
    op.drop_table("inventory_variants")
    op.drop_table("inventory_locations")
