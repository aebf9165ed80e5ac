"""`libs.cancellation.uncancelled`: a read whose caller is cancelled (a passed deadline) keeps its pooled PostgreSQL
connection, where a plainly cancelled read makes SQLAlchemy discard it (the next request would reconnect)."""

from __future__ import annotations

import asyncio
import gc

import pytest
from sqlalchemy import text

from libs.cancellation import uncancelled
from libs.db import create_engine, reader

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


async def backend_pid_after_a_cancelled_read(postgres_url: str, shielded: bool) -> tuple[int, int]:
    engine = create_engine(postgres_url, pool_size=1)
    try:
        source = reader(engine)

        async def slow_read() -> int:
            async with source.connect() as connection:
                return await connection.scalar(text("SELECT pg_backend_pid() FROM pg_sleep(0.2)"))

        async def quick_read() -> int:
            async with source.connect() as connection:
                return await connection.scalar(text("SELECT pg_backend_pid()"))

        before = await quick_read()
        caller = asyncio.create_task(uncancelled(slow_read()) if shielded else slow_read())
        await asyncio.sleep(0.05)  # mid-query
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        return before, await quick_read()  # waits for the one pooled connection
    finally:
        await engine.dispose()


async def test_a_cancelled_caller_leaves_the_read_to_finish_on_its_pooled_connection(postgres_url):
    before, after = await backend_pid_after_a_cancelled_read(postgres_url, shielded=True)
    assert after == before


async def test_without_it_a_cancelled_read_costs_the_pooled_connection(postgres_url):
    before, after = await backend_pid_after_a_cancelled_read(postgres_url, shielded=False)
    assert after != before  # the reason `uncancelled` exists: if SQLAlchemy stops discarding, this shows it


async def test_a_failure_of_an_abandoned_read_is_not_reported_as_unretrieved(postgres_url, caplog):
    engine = create_engine(postgres_url, pool_size=1)
    try:

        async def failing_read() -> None:
            async with reader(engine).connect() as connection:
                await connection.execute(text("SELECT 1 / (SELECT 0 FROM pg_sleep(0.1))"))

        caller = asyncio.create_task(uncancelled(failing_read()))
        await asyncio.sleep(0.02)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.sleep(0.3)
        gc.collect()  # an unretrieved task exception is reported when the task is collected
        assert "never retrieved" not in caplog.text
    finally:
        await engine.dispose()
