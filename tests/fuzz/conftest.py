"""The fuzz tier: hypothesis profiles and one long-lived in-process server per service and test module.

Profiles: "dev" (default, random, bounded), "ci" (the same bound, derandomized so a CI run is reproducible:
chosen when CI or NEXTBEST_REQUIRE_POSTGRES is set), "deep" (HYPOTHESIS_PROFILE=deep: many more examples for a
local long run). Servers run on SQLite only: the fuzz tier tests input handling, which the storage dialect does
not change, and the integration tier already runs every RPC on PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from hypothesis import HealthCheck, settings

from tests.fuzz.targets import Target, start_target

_COMMON = {
    "deadline": None,  # a gRPC round trip on a busy 2-core machine varies; hangs are caught by the call deadline
    # One server per module serves every example on purpose; long-list requests are slow to generate on purpose.
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("dev", max_examples=60, **_COMMON)
settings.register_profile("ci", max_examples=60, derandomize=True, database=None, **_COMMON)
settings.register_profile("deep", max_examples=2_000, **_COMMON)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE")
    or ("ci" if os.environ.get("CI") or os.environ.get("NEXTBEST_REQUIRE_POSTGRES") == "1" else "dev")
)


class Targets:
    """Services started on first use and kept running for the whole test module (every example of every RPC)."""

    def __init__(self, stack: AsyncExitStack, folders: pytest.TempPathFactory) -> None:
        self._stack = stack
        self._folders = folders
        self.running: dict[str, Target] = {}

    async def __call__(self, name: str) -> Target:
        if name not in self.running:
            self.running[name] = await self._stack.enter_async_context(start_target(name, self._folders.mktemp(name)))
        return self.running[name]


@pytest.fixture(scope="module")
async def targets(tmp_path_factory) -> AsyncIterator[Targets]:
    """`await targets("identity")`: that service, running; after the module each one used must still answer a
    valid request (no crash, no corrupt state)."""
    async with AsyncExitStack() as stack:
        started = Targets(stack, tmp_path_factory)
        yield started
        for target in started.running.values():
            await target.probe()
