"""Database plumbing: one async engine per process, a session per request, Alembic migrations, error translation.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) is the production shape. Each service owns
distinct tables and its own Alembic version table, so all services can share one PostgreSQL database.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from libs.errors import AlreadyExists, Unavailable


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def create_engine(
    url: str, *, pool_size: int = 12, pool_timeout: float = 5.0, hide_parameters: bool = False
) -> AsyncEngine:
    """The process's engine. SQLite gets WAL and a busy timeout so readers never block the writer.

    `hide_parameters` keeps bound values out of driver error messages (and so out of logged stack traces): for
    services whose parameters are PII.
    """
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            connect_args={"timeout": 30},
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            hide_parameters=hide_parameters,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    connect_args = {}
    if make_url(url).get_driver_name() == "asyncpg":
        # JIT compilation costs milliseconds on our short OLTP queries (seen after bulk loads before ANALYZE).
        connect_args = {"server_settings": {"jit": "off"}}
    return create_async_engine(
        url,
        # A fixed pool: overflow connections are closed on return, and under load that became a connect
        # (≈4% of identity's CPU in the benchmark) per burst. Requests wait for a pooled connection instead.
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        connect_args=connect_args,
        # JSON columns (profile state, decision traces) are on hot paths: orjson is ~10x faster than json.
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        hide_parameters=hide_parameters,
    )


def reader(engine: AsyncEngine) -> AsyncEngine:
    """The engine for single-statement reads. On PostgreSQL a plain read needs no transaction: autocommit skips the
    BEGIN and ROLLBACK round trips SQLAlchemy would add around it (two of three round trips of a primary-key read).
    SQLite never opens one for a SELECT anyway. Build it once and keep it: each call makes a new engine (≈ 20 µs);
    given one it already is, it returns it."""
    if engine.dialect.name != "postgresql" or engine.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def one_statement(engine: AsyncEngine) -> AbstractAsyncContextManager[AsyncConnection]:
    """A connection for ONE write statement that must apply whole, committed when the block ends. On PostgreSQL a
    statement is its own transaction, and so is an executemany (asyncpg sends all its rows before one Sync: atomic
    since 0.22), so autocommit saves the BEGIN and COMMIT round trips: one round trip instead of three. SQLite's
    executemany commits row by row outside a transaction, so there it runs inside one. Pass the `reader` engine
    on hot paths (it is not rebuilt)."""
    if engine.dialect.name == "postgresql":
        return reader(engine).connect()
    return engine.begin()


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[AsyncConnection]:
    """One connection to `url` for a one-off job (a command, a benchmark's check), its engine disposed after."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


def insert_for(engine: AsyncEngine):
    """The dialect's `insert` construct, which has ON CONFLICT support on both PostgreSQL and SQLite."""
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


def as_utc(value: datetime | None) -> datetime | None:
    """Datetimes read back as aware UTC: SQLite returns the stored UTC wall-clock digits without an offset."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def migrate(engine: AsyncEngine, script_location: Path, version_table: str) -> None:
    """Upgrade this service's tables to the newest Alembic revision (serialised across replicas on PostgreSQL)."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["version_table"] = version_table

    def upgrade(sync_connection) -> None:
        config.attributes["connection"] = sync_connection
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Two replicas starting together must not both create the same tables.
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(version_table.encode())})
        await connection.run_sync(upgrade)


@asynccontextmanager
async def translate_errors(what: str) -> AsyncIterator[None]:
    """Turn driver errors into domain errors: constraint violations and an unreachable database."""
    try:
        yield
    except IntegrityError as exc:
        raise AlreadyExists(f"{what}: conflicts with existing data") from exc
    except (OperationalError, DBAPIError) as exc:
        if getattr(exc, "connection_invalidated", False) or isinstance(exc, OperationalError):
            raise Unavailable(f"{what}: database unavailable") from exc
        raise
