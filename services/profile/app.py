"""Wiring of the profile service: engine, repository, identity client, domain service, servicer, start and stop.
On PostgreSQL a relay LISTENs for every replica's committed changes: it feeds `WatchChanges` and the read cache."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.clients import peer_credentials
from libs.db import create_engine, migrate
from libs.errors import NextBestError
from libs.protoconv import utcnow
from libs.server import Registration, ServiceApp
from services.profile.domain import ProfileService
from services.profile.domain.lineage import LineageFollower
from services.profile.resolver import IdentityClient
from services.profile.servicer import FULL_NAME, ProfileServicer
from services.profile.settings import ProfileSettings
from services.profile.storage import SqlProfileRepository

_log = logging.getLogger(__name__)


async def migrate_schema(engine: AsyncEngine) -> None:
    """Upgrade this service's tables to the newest revision: at start-up, or from `nextbest migrate`."""
    await migrate(engine, Path(__file__).parent / "migrations", "alembic_version_profile")


def _report_stopped(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("the lineage follower stopped: merges and erasures no longer reach the profile",
                   exc_info=task.exception())


async def _every(seconds: float, job: Callable[[], Awaitable[object]], what: str, at_start: bool = False) -> None:
    """Run `job` every `seconds` (the first time at once when `at_start`) until cancelled; a database that is down
    is retried next interval."""
    try:
        if not at_start:
            await asyncio.sleep(seconds)
        while True:
            try:
                await job()
            except NextBestError as exc:
                _log.warning("%s: %s; retrying in %.1f s", what, exc, seconds)
            await asyncio.sleep(seconds)
    except Exception:
        _log.exception("%s stopped: it no longer runs until the service restarts", what)
        raise


def build(settings: ProfileSettings) -> ServiceApp:
    """The profile service, ready to serve once `on_start` has migrated the database."""
    engine = create_engine(settings.resolved_database_url, **settings.common.db_pool)
    repository = SqlProfileRepository(
        engine,
        cached_reads=settings.read_cache_max_entries,
        recent_activity=settings.recent_activity,
        share_saved_states=settings.notify_saved_states,
    )
    service = ProfileService(
        repository,
        max_batch=settings.max_batch,
        recent_activity=settings.recent_activity,
        ingest_lanes=settings.ingest_lanes if engine.dialect.name == "postgresql" else 1,
    )
    identity = IdentityClient(
        settings.identity_target,
        settings.identity_timeout_seconds,
        credentials=peer_credentials(settings.common),
        cached_resolutions=settings.resolution_cache_max_entries,
    )
    follower = LineageFollower(repository, identity, service.segments, utcnow, settings.lineage_poll_seconds)
    tasks: list[asyncio.Task] = []

    async def on_start() -> None:
        if settings.common.migrate_on_start:
            await migrate_schema(engine)
        await service.load_segments()
        if repository.relay is not None:
            # Every replica's commits reach this one's change feed and read cache (PostgreSQL LISTEN/NOTIFY).
            repository.relay.start()
            # Until it listens, watchers are turned away (and retry) and reads skip the cache: usually a few ms.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(repository.relay.listening.wait(), timeout=5.0)
        identity.open()
        # Open a pooled connection and compile the read path so the first real call does not pay for them.
        await repository.load_profile("", settings.recent_activity)
        # Identity's merges, unmerges and erasures reach the profile in the background; serving does not wait
        # for identity to be up.
        tasks.append(asyncio.create_task(follower.run(), name="profile-lineage-follower"))
        tasks[-1].add_done_callback(_report_stopped)
        tasks.append(
            asyncio.create_task(
                _every(settings.segment_poll_seconds, service.refresh_segments, "segment reload"),
                name="profile-segment-reload",
            )
        )
        if settings.segment_sweep_seconds:
            tasks.append(
                asyncio.create_task(
                    _every(settings.segment_sweep_seconds, service.sweep_segments, "segment sweep"),
                    name="profile-segment-sweep",
                )
            )
        if settings.refold_outdated_seconds:
            tasks.append(
                asyncio.create_task(
                    _every(settings.refold_outdated_seconds, follower.refold_outdated, "refold of outdated profiles",
                           at_start=True),
                    name="profile-refold-outdated",
                )
            )

    async def on_stop() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if repository.relay is not None:
            await repository.relay.stop()
        await identity.close()
        await engine.dispose()

    servicer = ProfileServicer(service, identity, follower)
    return ServiceApp(
        name="profile",
        registrations=[Registration(pb_grpc.add_ProfileServiceServicer_to_server, servicer, FULL_NAME)],
        on_start=on_start,
        on_stop=on_stop,
        on_drain=service.changes.close,
        parts={
            "engine": engine,
            "repository": repository,
            "service": service,
            "identity": identity,
            "lineage": follower,
        },
    )
