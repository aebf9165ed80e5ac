"""The model registry table (SQLAlchemy Core) and its repository adapter, on SQLite and PostgreSQL.

The table is the source of truth for which versions exist and their status; the artifact folders hold the models.
It is read once per refresh, never on the Score path. (use_case, version) is the primary key: two replicas
syncing the same folders at once insert with ON CONFLICT DO NOTHING, so each version is registered once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, Column, DateTime, MetaData, String, Table, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db import insert_for, translate_errors
from services.scoring.artifacts import ModelStatus
from services.scoring.domain import RegisteredModel

metadata = MetaData()

models = Table(
    "scoring_models",
    metadata,
    Column("use_case", String(64), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("artifact_path", String(256), nullable=False),  # relative to models_dir: an object-store style key
    Column("feature_names", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("training_rows", BigInteger, nullable=False),
    Column("trained_at", DateTime(timezone=True), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
)

#: Within a use case: newest registered first; a batch registered together is ordered by training time.
_NEWEST_FIRST = (
    models.c.use_case,
    models.c.registered_at.desc(),
    models.c.trained_at.desc(),
    models.c.version.desc(),
)


def _to_db(moment: datetime) -> datetime:
    # SQLite stores the wall-clock digits and drops the offset, so everything is written in UTC.
    return moment.astimezone(UTC)


def _from_db(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _model(row: Row) -> RegisteredModel:
    return RegisteredModel(
        name=row.name,
        use_case=row.use_case,
        version=row.version,
        status=ModelStatus(row.status),
        feature_names=tuple(row.feature_names),
        metrics={name: float(value) for name, value in row.metrics.items()},
        training_rows=row.training_rows,
        trained_at=_from_db(row.trained_at),
        artifact_path=row.artifact_path,
        registered_at=_from_db(row.registered_at),
    )


class SqlModelRegistry:
    """`ModelRegistry` on an AsyncEngine: one connection per call, Core statements only."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = insert_for(engine)

    async def registered_keys(self) -> set[tuple[str, str]]:
        async with translate_errors("model registry read"), self.engine.connect() as connection:
            rows = await connection.execute(select(models.c.use_case, models.c.version))
            return {(row.use_case, row.version) for row in rows}

    async def register(self, new: Sequence[RegisteredModel]) -> None:
        if not new:
            return
        statement = self._insert(models).on_conflict_do_nothing(index_elements=["use_case", "version"])
        values = [
            {
                "use_case": model.use_case,
                "version": model.version,
                "name": model.name,
                "status": model.status.value,
                "artifact_path": model.artifact_path,
                "feature_names": list(model.feature_names),
                "metrics": model.metrics,
                "training_rows": model.training_rows,
                "trained_at": _to_db(model.trained_at),
                "registered_at": _to_db(model.registered_at),
            }
            for model in new
        ]
        async with translate_errors("model registration"), self.engine.begin() as connection:
            await connection.execute(statement, values)

    async def models(self, use_case: str | None = None) -> list[RegisteredModel]:
        query = select(models).order_by(*_NEWEST_FIRST)
        if use_case is not None:
            query = query.where(models.c.use_case == use_case)
        async with translate_errors("model registry read"), self.engine.connect() as connection:
            return [_model(row) for row in await connection.execute(query)]
