"""Wiring of the identity service: engine, repository, domain service, servicer, start-up and shut-down."""

from __future__ import annotations

from pathlib import Path

from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc

from libs.db import create_engine, migrate
from libs.server import Registration, ServiceApp
from services.identity.domain import Identifier, IdentifierKind, IdentityService, Normaliser
from services.identity.servicer import FULL_NAME, IdentityServicer
from services.identity.settings import IdentitySettings
from services.identity.storage import SqlIdentityRepository

_WARM_UP_IDENTIFIER = Identifier(IdentifierKind.EMAIL, "warm-up@nextbest.invalid")


def build(settings: IdentitySettings) -> ServiceApp:
    """The identity service, ready to serve once `on_start` has migrated the database."""
    engine = create_engine(settings.resolved_database_url)
    repository = SqlIdentityRepository(engine)
    service = IdentityService(repository, Normaliser(settings.default_region))

    async def on_start() -> None:
        await migrate(engine, Path(__file__).parent / "migrations", "alembic_version_identity")
        # Open a pooled connection and compile Resolve's lookup so the first real call does not pay for them.
        await repository.owners([_WARM_UP_IDENTIFIER])

    async def on_stop() -> None:
        await engine.dispose()

    servicer = IdentityServicer(service)
    return ServiceApp(
        name="identity",
        registrations=[Registration(pb_grpc.add_IdentityServiceServicer_to_server, servicer, FULL_NAME)],
        on_start=on_start,
        on_stop=on_stop,
        on_drain=service.changes.close,
        parts={"engine": engine, "repository": repository, "service": service},
    )
