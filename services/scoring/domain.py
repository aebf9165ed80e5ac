"""Scoring: the model registry's sync and champion choice, request validation, feature assembly, one predict call.

No gRPC and no SQL: the registry table is reached through the `ModelRegistry` port, artifacts through
`services.scoring.artifacts`.

Serving state lives in memory: `refresh()` registers new artifact folders, then loads the champion of every use
case (the newest registered with status champion) with `nthread=1` — with more threads XGBoost's OpenMP workers
spin on both cores even for one row (PERFORMANCE.md). A Score call touches no database and no file.

Score runs `inplace_predict` inline on the event loop rather than in a worker thread: for a few dozen rows the
predict costs ~0.3 ms, less than a thread hand-off plus its wake-up, and one call holds the loop only that long.
Very large batches (up to `max_candidates`) stay a few milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import xgboost as xgb

from libs.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.protoconv import utcnow
from services.scoring.artifacts import Artifact, ModelStatus, check_feature_names, list_artifacts, load_booster

log = logging.getLogger("nextbest.scoring")

#: A finite double beyond this becomes inf in the float32 matrix XGBoost reads.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NAN = math.nan
_OUT_OF_RANGE = "must be finite and within float32 range (NaN means missing)"


class Candidate(Protocol):
    """One offer to score (a protobuf `Candidate` fits as it is, so requests are not copied)."""

    @property
    def offer_id(self) -> str: ...

    @property
    def offer_features(self) -> Mapping[str, float]: ...


@dataclass(frozen=True, slots=True)
class OfferCandidate:
    """A `Candidate` built in Python (tools, tests)."""

    offer_id: str
    offer_features: Mapping[str, float]


class FeatureSchema:
    """A model's feature columns: name -> column index, computed once per loaded model.

    Each feature map is read exactly once, checking every value (also those the model ignores) while filling the
    row: iterating a protobuf map costs ~0.25 us per entry, more than the rest of the assembly.
    """

    def __init__(self, names: Sequence[str]) -> None:
        check_feature_names(names)
        self.names: tuple[str, ...] = tuple(names)
        self.columns: dict[str, int] = {name: i for i, name in enumerate(self.names)}

    def _fill(self, row: list[float], features: Mapping[str, float]) -> str | None:
        """Writes the known features into `row`; returns the name of a value float32 cannot hold, if any."""
        columns = self.columns
        for name, value in features.items():
            if abs(value) > _FLOAT32_MAX:  # inf, or finite but inf once float32; NaN compares false (missing)
                return name
            column = columns.get(name)
            if column is not None:  # features the model does not know are ignored
                row[column] = value
        return None

    def score_matrix(self, customer_features: Mapping[str, float], candidates: Sequence[Candidate]) -> np.ndarray:
        """N candidates x F features, float32: the customer's row joined with each offer's features.

        An offer feature wins over a customer feature of the same name; features nobody sent are NaN (missing).
        A value that is not finite is rejected naming it, e.g. `candidates[3].offer_features[offer_value]`.
        """
        customer_row = [_NAN] * len(self.names)
        if (bad := self._fill(customer_row, customer_features)) is not None:
            raise InvalidArgument(f"customer_features[{bad}]", _OUT_OF_RANGE)
        rows = []
        for i, candidate in enumerate(candidates):
            row = customer_row.copy()
            if (bad := self._fill(row, candidate.offer_features)) is not None:
                raise InvalidArgument(f"candidates[{i}].offer_features[{bad}]", _OUT_OF_RANGE)
            rows.append(row)
        return np.array(rows, dtype=np.float32)

    def training_matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """One float32 row per mapping; raises ValueError naming the first value float32 cannot hold."""
        filled = []
        for i, features in enumerate(rows):
            row = [_NAN] * len(self.names)
            if (bad := self._fill(row, features)) is not None:
                raise ValueError(f"rows[{i}][{bad}] is infinite or beyond float32 range")
            filled.append(row)
        return np.array(filled, dtype=np.float32).reshape(len(rows), len(self.names))


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A row of the model registry."""

    name: str
    use_case: str
    version: str
    status: ModelStatus
    feature_names: tuple[str, ...]
    metrics: dict[str, float]
    training_rows: int
    trained_at: datetime
    artifact_path: str  # relative to models_dir, `{use_case}/{version}`
    registered_at: datetime

    @classmethod
    def from_artifact(cls, artifact: Artifact, registered_at: datetime) -> RegisteredModel:
        meta = artifact.metadata
        return cls(
            name=meta.name,
            use_case=meta.use_case,
            version=meta.version,
            status=meta.status,
            feature_names=meta.feature_names,
            metrics=dict(meta.metrics),
            training_rows=meta.training_rows,
            trained_at=meta.trained_at,
            artifact_path=artifact.key,
            registered_at=registered_at,
        )


@dataclass(frozen=True, slots=True)
class ServingModel:
    """A champion loaded for serving."""

    model: RegisteredModel
    booster: xgb.Booster
    schema: FeatureSchema


@dataclass(frozen=True, slots=True)
class Scores:
    """The answer to Score: the model that scored and one probability per candidate, in request order."""

    model_name: str
    model_version: str
    offer_ids: list[str]
    probabilities: list[float]


class ModelRegistry(Protocol):
    """Storage port: the registry table."""

    async def registered_keys(self) -> set[tuple[str, str]]:
        """(use_case, version) of every registered model."""
        ...

    async def register(self, models: Sequence[RegisteredModel]) -> None:
        """Adds the models; a (use_case, version) already registered (e.g. by another replica) is left as it is."""
        ...

    async def models(self, use_case: str | None = None) -> list[RegisteredModel]:
        """Registered models (of one use case, or all) by use case, then newest registered first."""
        ...


BoosterLoader = Callable[[Path, Sequence[str]], xgb.Booster]


def _serving_loader(folder: Path, feature_names: Sequence[str]) -> xgb.Booster:
    return load_booster(folder, feature_names, nthread=1)


class ScoringService:
    """The scoring use cases: refresh the registry and champions, score candidates, list models."""

    def __init__(
        self,
        registry: ModelRegistry,
        models_dir: Path,
        *,
        default_use_case: str,
        max_candidates: int,
        clock: Callable[[], datetime] = utcnow,
        loader: BoosterLoader = _serving_loader,
    ) -> None:
        self.registry = registry
        self.models_dir = models_dir
        self.default_use_case = default_use_case
        self.max_candidates = max_candidates
        self.clock = clock
        self.loader = loader
        self._champions: dict[str, ServingModel] = {}
        self._use_cases: frozenset[str] = frozenset({default_use_case})

    @property
    def champions(self) -> dict[str, ServingModel]:
        """The loaded champion of each use case that has one."""
        return dict(self._champions)

    async def refresh(self) -> None:
        """Registers artifact folders not yet in the registry, then loads each use case's champion.

        The new state replaces the old only once everything loaded, so a failed refresh leaves serving untouched.
        """
        artifacts = await asyncio.to_thread(list_artifacts, self.models_dir)
        known = await self.registry.registered_keys()
        now = self.clock()
        new = [
            RegisteredModel.from_artifact(artifact, now)
            for artifact in artifacts
            if (artifact.metadata.use_case, artifact.metadata.version) not in known
        ]
        if new:
            await self.registry.register(new)
            log.info("registered %d model version(s)", len(new), extra={"versions": [m.artifact_path for m in new]})
        models = await self.registry.models()
        chosen: dict[str, RegisteredModel] = {}
        for model in models:  # newest first within a use case: the first champion seen wins
            if model.status is ModelStatus.CHAMPION:
                chosen.setdefault(model.use_case, model)
        champions = {}
        for use_case, model in chosen.items():
            booster = await asyncio.to_thread(self.loader, self.models_dir / model.artifact_path, model.feature_names)
            champions[use_case] = ServingModel(model, booster, FeatureSchema(model.feature_names))
            log.info("serving %s %s for %s", model.name, model.version, use_case)
        self._use_cases = frozenset({self.default_use_case, *(model.use_case for model in models)})
        self._champions = champions
        if self.default_use_case not in champions:
            log.warning("no champion model for the default use case %s: Score will refuse it", self.default_use_case)

    def score(self, use_case: str, customer_features: Mapping[str, float], candidates: Sequence[Candidate]) -> Scores:
        """Scores every candidate for the customer with one model call; a bad request never reaches the model."""
        count = len(candidates)
        if count == 0:
            raise InvalidArgument("candidates", "at least one candidate is required")
        if count > self.max_candidates:
            raise InvalidArgument("candidates", f"at most {self.max_candidates} candidates per call, got {count}")
        for i, candidate in enumerate(candidates):
            if not candidate.offer_id.strip():
                raise InvalidArgument(f"candidates[{i}].offer_id", "is required")
        serving = self._serving(use_case or self.default_use_case)
        # Feature values are checked while the matrix is built (one read of each map), so after the use case.
        matrix = serving.schema.score_matrix(customer_features, candidates)
        probabilities = serving.booster.inplace_predict(matrix, validate_features=False)
        return Scores(
            serving.model.name,
            serving.model.version,
            [candidate.offer_id for candidate in candidates],
            probabilities.tolist(),
        )

    def _serving(self, use_case: str) -> ServingModel:
        serving = self._champions.get(use_case)
        if serving is not None:
            return serving
        if use_case in self._use_cases:
            raise FailedPrecondition(f"no champion model for use case {use_case}")
        raise NotFound(f"use case {use_case} has no registered models")

    async def list_models(self, use_case: str) -> list[RegisteredModel]:
        """Registered models of one use case (empty: all), newest first within each use case."""
        return await self.registry.models(use_case or None)
