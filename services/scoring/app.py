"""Wiring of the scoring service: engine, registry, domain service, servicer, start-up and shut-down."""

from __future__ import annotations

from pathlib import Path

from nextbest.scoring.v1 import scoring_service_pb2_grpc as pb_grpc

from libs.db import create_engine, migrate
from libs.server import Registration, ServiceApp
from services.scoring.artifacts import LocalArtifactStore
from services.scoring.domain import ScoringService
from services.scoring.servicer import FULL_NAME, ScoringServicer
from services.scoring.settings import ScoringSettings
from services.scoring.storage import SqlModelRegistry


def build(settings: ScoringSettings) -> ServiceApp:
    """The scoring service, ready to serve once `on_start` has migrated, synced the registry and loaded champions."""
    engine = create_engine(settings.resolved_database_url)
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

    async def on_start() -> None:
        await migrate(engine, Path(__file__).parent / "migrations", "alembic_version_scoring")
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
