"""Wiring of the profile service: engine, repository, identity client, domain service, servicer, start and stop."""

from __future__ import annotations

from pathlib import Path

from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc

from libs.db import create_engine, migrate
from libs.server import Registration, ServiceApp
from services.profile.domain import ProfileService
from services.profile.resolver import IdentityClient
from services.profile.servicer import FULL_NAME, ProfileServicer
from services.profile.settings import ProfileSettings
from services.profile.storage import SqlProfileRepository


def build(settings: ProfileSettings) -> ServiceApp:
    """The profile service, ready to serve once `on_start` has migrated the database."""
    engine = create_engine(settings.resolved_database_url)
    repository = SqlProfileRepository(engine)
    service = ProfileService(
        repository, max_batch=settings.max_batch, recent_activity=settings.recent_activity
    )
    identity = IdentityClient(settings.identity_target, settings.identity_timeout_seconds)

    async def on_start() -> None:
        await migrate(engine, Path(__file__).parent / "migrations", "alembic_version_profile")
        await service.load_segments()
        identity.open()
        # Open a pooled connection and compile the read path so the first real call does not pay for them.
        await repository.load_profile("", settings.recent_activity)

    async def on_stop() -> None:
        await identity.close()
        await engine.dispose()

    servicer = ProfileServicer(service, identity)
    return ServiceApp(
        name="profile",
        registrations=[Registration(pb_grpc.add_ProfileServiceServicer_to_server, servicer, FULL_NAME)],
        on_start=on_start,
        on_stop=on_stop,
        on_drain=service.changes.close,
        parts={"engine": engine, "repository": repository, "service": service, "identity": identity},
    )
