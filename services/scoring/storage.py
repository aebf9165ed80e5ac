"""The model registry table (SQLAlchemy Core) and its repository adapter, on SQLite and PostgreSQL.

The table is the source of truth for which versions exist, their model card and their status; the artifact store
holds the models. It is read on start, by the registry poll and by the registry RPCs, never on the Score path.

Every status change (import, promote, retire) is one transaction that first takes the registry's write lock
(a transaction-scoped advisory lock on PostgreSQL; SQLite's single writer lock, taken up front), so concurrent
promotions from several replicas or CLIs apply one after the other. Partial unique indexes (0002) guarantee at most
one champion and one challenger per use case even if a writer forgot the lock.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    MetaData,
    String,
    Table,
    select,
    text,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.db import insert_for, translate_errors
from libs.errors import FailedPrecondition, NotFound
from services.scoring.artifacts import FeatureSpec, ModelStatus
from services.scoring.domain import RegisteredModel

metadata = MetaData()

models = Table(
    "scoring_models",
    metadata,
    Column("use_case", String(64), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("artifact_path", String(256), nullable=False),  # the artifact store key: `{use_case}/{version}`
    Column("feature_names", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("training_rows", BigInteger, nullable=False),
    Column("trained_at", DateTime(timezone=True), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("features", JSON, nullable=True),
    Column("allows_missing", Boolean, nullable=False),
    Column("params", JSON, nullable=True),
    Column("parent_version", String(64), nullable=True),
    Column("window_start", DateTime(timezone=True), nullable=True),
    Column("window_end", DateTime(timezone=True), nullable=True),
    Column("row_counts", JSON, nullable=True),
    Column("card", JSON, nullable=True),
    Column("traffic_share", Float, nullable=False),
    Column("status_changed_at", DateTime(timezone=True), nullable=True),
)

#: Within a use case: newest registered first; a batch registered together is ordered by training time.
_NEWEST_FIRST = (
    models.c.use_case,
    models.c.registered_at.desc(),
    models.c.trained_at.desc(),
    models.c.version.desc(),
)
_SERVING = (ModelStatus.CHAMPION.value, ModelStatus.CHALLENGER.value)
_LOCK_KEY = zlib.crc32(b"scoring_models")


def _to_db(moment: datetime | None) -> datetime | None:
    # SQLite stores the wall-clock digits and drops the offset, so everything is written in UTC.
    return None if moment is None else moment.astimezone(UTC)


def _from_db(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _model(row: Row) -> RegisteredModel:
    window = None
    if row.window_start is not None and row.window_end is not None:
        window = (_from_db(row.window_start), _from_db(row.window_end))
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
        features=tuple(FeatureSpec.from_json(spec) for spec in row.features or ()),
        allows_missing=bool(row.allows_missing),
        params=dict(row.params or {}),
        parent_version=row.parent_version,
        training_window=window,
        row_counts={k: int(v) for k, v in (row.row_counts or {}).items()},
        card=dict(row.card or {}),
        traffic_share=float(row.traffic_share),
        status_changed_at=_from_db(row.status_changed_at),
    )


def _values(model: RegisteredModel) -> dict:
    window = model.training_window
    return {
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
        "features": [spec.to_json() for spec in model.features],
        "allows_missing": model.allows_missing,
        "params": model.params,
        "parent_version": model.parent_version,
        "window_start": _to_db(window[0]) if window else None,
        "window_end": _to_db(window[1]) if window else None,
        "row_counts": model.row_counts,
        "card": model.card,
        "traffic_share": model.traffic_share,
        "status_changed_at": _to_db(model.status_changed_at or model.registered_at),
    }


def _key(use_case: str, version: str):
    return (models.c.use_case == use_case) & (models.c.version == version)


class SqlModelRegistry:
    """`ModelRegistry` on an AsyncEngine: one connection per call, Core statements only."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = insert_for(engine)

    async def _lock(self, connection: AsyncConnection) -> None:
        """Serialise registry writers for the rest of this transaction."""
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        else:
            # A write statement takes SQLite's writer lock now, before this transaction reads anything, so a
            # concurrent writer waits (busy timeout) instead of failing to upgrade a read lock later.
            await connection.execute(update(models).where(models.c.use_case.is_(None)).values(status=models.c.status))

    async def _demote(
        self, connection: AsyncConnection, use_case: str, status: ModelStatus, to: ModelStatus, now: datetime
    ) -> str | None:
        """Moves the holder of `status` in the use case to `to`; returns its version."""
        holder = (
            await connection.execute(
                select(models.c.version).where(models.c.use_case == use_case, models.c.status == status.value)
            )
        ).scalar_one_or_none()
        if holder is not None:
            await connection.execute(
                update(models)
                .where(_key(use_case, holder))
                .values(status=to.value, traffic_share=0.0, status_changed_at=_to_db(now))
            )
        return holder

    async def registered_keys(self) -> set[tuple[str, str]]:
        async with translate_errors("model registry read"), self.engine.connect() as connection:
            rows = await connection.execute(select(models.c.use_case, models.c.version))
            return {(row.use_case, row.version) for row in rows}

    async def register(self, new: Sequence[RegisteredModel], now: datetime) -> list[RegisteredModel]:
        if not new:
            return []
        async with translate_errors("model registration"), self.engine.begin() as connection:
            await self._lock(connection)
            known = {(r.use_case, r.version) for r in await connection.execute(select(models.c.use_case, models.c.version))}
            fresh = [m for m in new if m.key not in known]  # another replica may have registered some meanwhile
            # The newest trained champion (challenger) of a use case takes the role; other new ones step aside.
            winners: dict[tuple[str, ModelStatus], RegisteredModel] = {}
            for model in sorted(fresh, key=lambda m: (m.trained_at, m.version)):
                if model.status in (ModelStatus.CHAMPION, ModelStatus.CHALLENGER):
                    winners[(model.use_case, model.status)] = model
            rows = []
            for model in fresh:
                values = _values(model)
                if model.status is ModelStatus.CHAMPION and winners[(model.use_case, model.status)] is not model:
                    values["status"] = ModelStatus.RETIRED.value
                elif model.status is ModelStatus.CHALLENGER and winners[(model.use_case, model.status)] is not model:
                    values.update(status=ModelStatus.CANDIDATE.value, traffic_share=0.0)
                rows.append(values)
            for use_case, status in winners:
                demoted = ModelStatus.RETIRED if status is ModelStatus.CHAMPION else ModelStatus.CANDIDATE
                await self._demote(connection, use_case, status, demoted, now)
            if rows:
                await connection.execute(self._insert(models), rows)
        added = {(r["use_case"], r["version"]) for r in rows}
        return [m for m in await self.models() if m.key in added]

    async def models(
        self, use_case: str | None = None, statuses: Sequence[ModelStatus] = ()
    ) -> list[RegisteredModel]:
        query = select(models).order_by(*_NEWEST_FIRST)
        if use_case is not None:
            query = query.where(models.c.use_case == use_case)
        if statuses:
            query = query.where(models.c.status.in_([s.value for s in statuses]))
        async with translate_errors("model registry read"), self.engine.connect() as connection:
            return [_model(row) for row in await connection.execute(query)]

    async def get(self, use_case: str, version: str) -> RegisteredModel | None:
        async with translate_errors("model registry read"), self.engine.connect() as connection:
            row = (await connection.execute(select(models).where(_key(use_case, version)))).one_or_none()
        return None if row is None else _model(row)

    async def serving(self) -> list[RegisteredModel]:
        query = select(models).where(models.c.status.in_(_SERVING)).order_by(*_NEWEST_FIRST)
        async with translate_errors("model registry read"), self.engine.connect() as connection:
            return [_model(row) for row in await connection.execute(query)]

    async def promote(
        self, use_case: str, version: str, target: ModelStatus, share: float, now: datetime
    ) -> tuple[RegisteredModel, str | None]:
        async with translate_errors("model promotion"), self.engine.begin() as connection:
            await self._lock(connection)
            row = (await connection.execute(select(models).where(_key(use_case, version)))).one_or_none()
            if row is None:
                raise NotFound(f"model {use_case}/{version} is not registered")
            current = ModelStatus(row.status)
            replaced = None
            if target is ModelStatus.CHAMPION:
                if current is not ModelStatus.CHAMPION:
                    replaced = await self._demote(connection, use_case, ModelStatus.CHAMPION, ModelStatus.RETIRED, now)
                    share = 0.0
                else:
                    share = float(row.traffic_share)
            else:
                if current is ModelStatus.CHAMPION:
                    raise FailedPrecondition(
                        f"model {use_case}/{version} is the champion; promote another version to champion first"
                    )
                if current is not ModelStatus.CHALLENGER:
                    replaced = await self._demote(
                        connection, use_case, ModelStatus.CHALLENGER, ModelStatus.CANDIDATE, now
                    )
            await connection.execute(
                update(models)
                .where(_key(use_case, version))
                .values(status=target.value, traffic_share=share, status_changed_at=_to_db(now))
            )
            promoted = _model((await connection.execute(select(models).where(_key(use_case, version)))).one())
        return promoted, replaced

    async def retire(self, use_case: str, version: str, now: datetime) -> RegisteredModel:
        async with translate_errors("model retirement"), self.engine.begin() as connection:
            await self._lock(connection)
            row = (await connection.execute(select(models.c.status).where(_key(use_case, version)))).one_or_none()
            if row is None:
                raise NotFound(f"model {use_case}/{version} is not registered")
            if row.status == ModelStatus.CHAMPION.value:
                raise FailedPrecondition(
                    f"model {use_case}/{version} is the champion; promote another version to champion first"
                )
            if row.status != ModelStatus.RETIRED.value:
                await connection.execute(
                    update(models)
                    .where(_key(use_case, version))
                    .values(status=ModelStatus.RETIRED.value, traffic_share=0.0, status_changed_at=_to_db(now))
                )
            return _model((await connection.execute(select(models).where(_key(use_case, version)))).one())
