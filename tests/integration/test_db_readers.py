"""`libs.db.reader` and `one_statement`: on PostgreSQL an autocommit engine built once (a statement commits by
itself, no BEGIN/COMMIT round trips); on SQLite the engine itself, with the write inside a transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from libs.db import create_engine, one_statement, reader

pytestmark = pytest.mark.integration


async def test_the_reader_is_built_once_and_commits_each_statement_by_itself(database_url):
    engine = create_engine(database_url)
    try:
        source = reader(engine)
        assert reader(source) is source  # a repository keeps it; passing it on never rebuilds it
        postgres = engine.dialect.name == "postgresql"
        assert (source is not engine) == postgres
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE reader_probe (id INTEGER PRIMARY KEY)"))
        async with one_statement(source) as writer:
            await writer.execute(text("INSERT INTO reader_probe (id) VALUES (1)"))
            if postgres:  # committed by the statement itself: another connection sees it before the block ends
                async with engine.connect() as other:
                    assert await other.scalar(text("SELECT count(*) FROM reader_probe")) == 1
        async with source.connect() as connection:
            assert await connection.scalar(text("SELECT count(*) FROM reader_probe")) == 1
    finally:
        async with engine.begin() as connection:
            await connection.execute(text("DROP TABLE IF EXISTS reader_probe"))
        await engine.dispose()
