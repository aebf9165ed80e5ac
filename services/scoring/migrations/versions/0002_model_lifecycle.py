"""Model lifecycle: the full model card in the registry, challenger traffic shares, one champion per use case.

Adds the feature schema, missing-value policy, parameters, parent version, training window, row counts, the model
card, the challenger's traffic share and when the status last changed. Before 0002 a newer champion simply
shadowed older ones; those older champions become retired here, so that partial unique indexes can guarantee
at most one champion and one challenger per use case from now on.

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


def _new_columns() -> tuple[sa.Column, ...]:
    return (
        sa.Column("features", sa.JSON(), nullable=True),  # NULL: one numeric feature per feature_names entry
        sa.Column("allows_missing", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("parent_version", sa.String(64), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("row_counts", sa.JSON(), nullable=True),
        sa.Column("card", sa.JSON(), nullable=True),
        sa.Column("traffic_share", sa.Float(), nullable=False, server_default="0"),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True),
    )


def _keep_only_newest(status: str, demote_to: str) -> None:
    table = sa.table(
        "scoring_models",
        sa.column("use_case"),
        sa.column("version"),
        sa.column("status"),
        sa.column("registered_at"),
        sa.column("trained_at"),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(table.c.use_case, table.c.version)
        .where(table.c.status == status)
        .order_by(table.c.use_case, table.c.registered_at.desc(), table.c.trained_at.desc(), table.c.version.desc())
    ).all()
    seen: set[str] = set()
    for use_case, version in rows:
        if use_case in seen:
            bind.execute(
                sa.update(table)
                .where(table.c.use_case == use_case, table.c.version == version)
                .values(status=demote_to)
            )
        seen.add(use_case)


def upgrade() -> None:
    with op.batch_alter_table("scoring_models") as batch:
        for column in _new_columns():
            batch.add_column(column)
    _keep_only_newest("champion", "retired")
    _keep_only_newest("challenger", "candidate")
    for status in ("champion", "challenger"):
        only = sa.text(f"status = '{status}'")
        op.create_index(
            f"ux_scoring_models_one_{status}",
            "scoring_models",
            ["use_case"],
            unique=True,
            sqlite_where=only,
            postgresql_where=only,
        )


def downgrade() -> None:
    for status in ("champion", "challenger"):
        op.drop_index(f"ux_scoring_models_one_{status}", table_name="scoring_models")
    with op.batch_alter_table("scoring_models") as batch:
        for column in reversed(_new_columns()):
            batch.drop_column(column.name)
