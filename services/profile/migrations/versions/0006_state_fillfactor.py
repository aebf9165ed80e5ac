"""Profile states' pages keep 30% free (fillfactor 70) on PostgreSQL, so that rewriting a state stays on its page.

Ingest rewrites a customer's state in every transaction that folds one of their events. PostgreSQL can make that a
heap-only update (no index entry, and the old version pruned on the page without waiting for vacuum) only when the
new version fits on the same page, which a full page never allows. Only the table's setting changes (no rewrite, and
its lock blocks neither reads nor writes); pages written from now on keep the room.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE profile_states SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE profile_states RESET (fillfactor)")
