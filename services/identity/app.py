"""Wiring of the identity service: engine, repository, domain service, servicer, start-up and shut-down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.cancellation import stop_task
from libs.db import create_engine, migrate
from libs.server import Registration, ServiceApp
from services.identity.domain import Identifier, IdentifierKind, IdentityService, MatchPolicy, Normaliser
from services.identity.matching.model import MatchModel
from services.identity.servicer import FULL_NAME, IdentityServicer
from services.identity.settings import IdentitySettings
from services.identity.storage import SqlIdentityRepository

_log = logging.getLogger(__name__)
_WARM_UP_IDENTIFIER = Identifier(IdentifierKind.EMAIL, "warm-up@nextbest.invalid")
#: SQLite: seconds between the background WAL checkpoints that replace the automatic ones.
CHECKPOINT_INTERVAL_SECONDS = 1.0


def checkpoint_in_background(engine: AsyncEngine) -> Callable[[], Awaitable[Callable[[], Awaitable[None]]]]:
    """SQLite: move WAL checkpoints off the request path; returns `start`, whose result stops them.

    By default the commit that takes the WAL past 1,000 pages copies it into the database and syncs both files,
    and on Resolve's path that commit is whichever call stores a trait record: measured, the checkpoints were
    most of the p99 of Resolve by traits on SQLite (tens to hundreds of milliseconds on a busy disk). Here this
    engine's connections never checkpoint; a task does it every second, PASSIVE (it blocks neither readers nor
    writers), in the driver's thread.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _no_autocheckpoint(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    async def checkpoints() -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_SECONDS)
            try:
                async with engine.connect() as connection:
                    await connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except OperationalError:  # e.g. a disk error: the WAL keeps growing until the next one succeeds
                _log.warning("WAL checkpoint failed; retrying in %.0f s", CHECKPOINT_INTERVAL_SECONDS, exc_info=True)

    async def start() -> Callable[[], Awaitable[None]]:
        task = asyncio.create_task(checkpoints(), name="identity-wal-checkpoints")

        return lambda: stop_task(task)

    return start


async def migrate_schema(engine: AsyncEngine) -> None:
    """Upgrade this service's tables to the newest revision: at start-up, or from `nextbest migrate`."""
    await migrate(engine, Path(__file__).parent / "migrations", "alembic_version_identity")


def build(settings: IdentitySettings) -> ServiceApp:
    """The identity service, ready to serve once `on_start` has migrated the database."""
    # Identifiers and traits are PII: keep bound values out of driver errors and so out of logged stack traces,
    # and out of aiosqlite's DEBUG lines (it logs every statement with its parameters).
    engine = create_engine(settings.resolved_database_url, hide_parameters=True, **settings.common.db_pool)
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger("aiosqlite").level))
    start_checkpoints = checkpoint_in_background(engine) if engine.dialect.name == "sqlite" else None
    stop_checkpoints: list[Callable[[], Awaitable[None]]] = []
    repository = SqlIdentityRepository(engine)
    policy = MatchPolicy(
        upper=settings.match_upper_threshold,
        lower=settings.match_lower_threshold,
        max_candidates=settings.match_max_candidates,
    )
    service = IdentityService(repository, Normaliser(settings.default_region), policy=policy)

    async def on_start() -> None:
        if settings.common.migrate_on_start:
            await migrate_schema(engine)
        # The newest m/u parameters estimated from the stored records (`nextbest identity estimate`); the
        # built-in defaults until there are any.
        stored = await repository.latest_model()
        if stored is not None:
            try:
                service.use_model(MatchModel.from_dict(stored))
            except (ValueError, KeyError, TypeError):
                _log.warning("stored match model does not fit these comparison levels; using the defaults")
        # Open a pooled connection and compile Resolve's lookup so the first real call does not pay for them.
        await repository.owners([_WARM_UP_IDENTIFIER])
        if start_checkpoints is not None:
            stop_checkpoints.append(await start_checkpoints())

    async def on_stop() -> None:
        while stop_checkpoints:
            await stop_checkpoints.pop()()
        await engine.dispose()  # the last connection to close checkpoints what is left

    servicer = IdentityServicer(service)
    return ServiceApp(
        name="identity",
        registrations=[Registration(pb_grpc.add_IdentityServiceServicer_to_server, servicer, FULL_NAME)],
        on_start=on_start,
        on_stop=on_stop,
        on_drain=service.changes.close,
        parts={"engine": engine, "repository": repository, "service": service},
    )
