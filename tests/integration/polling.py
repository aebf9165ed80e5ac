"""Waiting in integration tests for what another task or process makes true (a change feed, a background loop)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(condition: Callable[[], bool | Awaitable[bool]], seconds: float = 10.0) -> None:
    """Poll `condition` (plain or async) until it holds; fail the test if it does not within `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
