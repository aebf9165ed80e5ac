"""Work that must finish even when whoever awaits it is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def uncancelled(work: Awaitable[T]) -> T:
    """Await database work that the caller's cancellation does not interrupt.

    A cancelled request (its gRPC deadline passed) would otherwise cancel asyncpg mid-query, and SQLAlchemy then
    discards the pooled connection: the next request pays a new connection (a TLS handshake with `sslmode=prefer`)
    exactly when the service is busiest, which the benchmark showed turning overload into a spiral. So the work
    runs to completion in its own task and returns its connection to the pool; only the waiting is cancelled.
    Use it for reads and for idempotent writes (a retry of the caller skips what committed).
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_drop_result)
        raise


def _drop_result(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so a failure of an abandoned task is not reported as never retrieved


async def stop_task(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has stopped; a crash it had is left to whoever reported it."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
