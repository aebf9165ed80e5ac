"""Wiring of the scoring service: engine, registry, domain service, servicer, start-up and shut-down."""

from __future__ import annotations

from pathlib import Path

from nextbest.scoring.v1 import scoring_service_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db import create_engine, migrate
from libs.metrics import meter
from libs.server import Registration, ServiceApp
from services.scoring.artifacts import LocalArtifactStore
from services.scoring.domain import ScoringService
from services.scoring.metrics import observe_serving_models
from services.scoring.servicer import FULL_NAME, ScoringServicer
from services.scoring.settings import ScoringSettings
from services.scoring.storage import SqlModelRegistry


async def migrate_schema(engine: AsyncEngine) -> None:
    """Upgrade this service's tables to the newest revision: at start-up, or from `nextbest migrate`."""
    await migrate(engine, Path(__file__).parent / "migrations", "alembic_version_scoring")


def build(settings: ScoringSettings) -> ServiceApp:
    """The scoring service, ready to serve once `on_start` has migrated, synced the registry and loaded champions."""
    engine = create_engine(settings.resolved_database_url, **settings.common.db_pool)
    registry = SqlModelRegistry(engine)
    store = LocalArtifactStore(settings.models_dir)
    service = ScoringService(
        registry,
        store,
        default_use_case=settings.default_use_case,
        max_candidates=settings.max_candidates,
        reject_unknown_features=settings.reject_unknown_features,
        batch_chunk_rows=settings.batch_chunk_rows,
    )
    observe_serving_models(meter("nextbest.scoring"), service)

    async def on_start() -> None:
        if settings.common.migrate_on_start:
            await migrate_schema(engine)
        # Register new artifact folders and load the champions: health says SERVING only after this.
        await service.refresh()
        service.start_polling(settings.registry_poll_seconds)

    async def on_stop() -> None:
        await service.stop_polling()
        await engine.dispose()

    return ServiceApp(
        name="scoring",
        registrations=[Registration(pb_grpc.add_ScoringServiceServicer_to_server, ScoringServicer(service), FULL_NAME)],
        on_start=on_start,
        on_stop=on_stop,
        parts={"engine": engine, "registry": registry, "service": service, "store": store},
    )
