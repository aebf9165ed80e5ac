"""The body of every service's Alembic env.py: run migrations on the connection `libs.db.migrate` passes in."""

from __future__ import annotations


def run_migrations() -> None:
    from alembic import context

    config = context.config
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        version_table=config.attributes["version_table"],
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()
