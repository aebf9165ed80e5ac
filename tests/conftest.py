"""Fixtures shared by every test tier: databases (real SQLite, real PostgreSQL) and in-process gRPC servers."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from libs.clients import open_channel
from libs.server import GrpcServer, ServiceApp

#: Admin connection used to create one throw-away database per PostgreSQL test.
POSTGRES_ADMIN_URL = os.environ.get(
    "NEXTBEST_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
#: Set by .ci/run: a missing PostgreSQL fails the run instead of skipping.
REQUIRE_POSTGRES = os.environ.get("NEXTBEST_REQUIRE_POSTGRES") == "1"
_postgres_skips: list[str] = []


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"nextbest_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL required but unreachable at {POSTGRES_ADMIN_URL}: {exc}")
        _postgres_skips.append(str(exc))
        pytest.skip(f"NO POSTGRESQL REACHABLE at {POSTGRES_ADMIN_URL}: {exc}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL), timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request) -> str:
    """Runs a test once on real SQLite and once on real PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


ServeFn = Callable[[ServiceApp], Awaitable[tuple[GrpcServer, grpc.aio.Channel]]]


@pytest.fixture
async def serve() -> AsyncIterator[ServeFn]:
    """Start ServiceApps on port 0 in this process; returns the server and a channel to it; stops them after."""
    started: list[tuple[GrpcServer, grpc.aio.Channel]] = []

    async def start(app: ServiceApp) -> tuple[GrpcServer, grpc.aio.Channel]:
        server = GrpcServer(app, "127.0.0.1", 0, grace=0.5)
        port = await server.start()
        channel = open_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return server, channel

    yield start
    for server, channel in reversed(started):
        await channel.close()
        await server.stop()


def pytest_terminal_summary(terminalreporter) -> None:
    if _postgres_skips:
        banner = "!" * 78
        terminalreporter.write_line(banner, red=True, bold=True)
        terminalreporter.write_line(
            f"POSTGRESQL TESTS SKIPPED ({len(_postgres_skips)}): no PostgreSQL reachable at {POSTGRES_ADMIN_URL}",
            red=True,
            bold=True,
        )
        terminalreporter.write_line(banner, red=True, bold=True)
        warnings.warn("PostgreSQL tests were skipped", stacklevel=1)
