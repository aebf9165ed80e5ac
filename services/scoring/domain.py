"""Scoring: the model registry's lifecycle, hot reload, request validation, feature assembly, one predict call.

No gRPC and no SQL: the registry table is reached through the `ModelRegistry` port, artifacts through the
`ArtifactStore` port (`services.scoring.artifacts`).

Serving state lives in memory as one immutable `ServingState` (per use case: the champion and, if any, a
challenger with its traffic share). `sync()` reads the registry's champion/challenger rows; when they changed it
loads the new boosters in a worker thread (`asyncio.to_thread`) and then swaps the one `_state` reference. A Score
call reads that reference once, so it is scored wholly by one version (the response names it) and a switch never
fails or mixes a request. Every process polls the registry (`start_polling`), so a promotion made through any
replica (or the CLI) is served everywhere within the poll interval. Boosters are loaded with `nthread=1`: with more
threads XGBoost's OpenMP workers spin on both cores even for one row (PERFORMANCE.md).

Score runs `inplace_predict` inline on the event loop rather than in a worker thread: for a few dozen rows the
predict costs ~0.3 ms, less than a thread hand-off plus its wake-up. Explain and ScoreBatch run in worker threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import xgboost as xgb

from libs.cancellation import stop_task
from libs.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.protoconv import utcnow
from services.scoring.artifacts import (
    Artifact,
    ArtifactStore,
    FeatureKind,
    FeatureSpec,
    ModelStatus,
    check_feature_names,
    model_columns,
    numeric_features,
)

log = logging.getLogger("nextbest.scoring")

#: A finite double beyond this becomes inf in the float32 matrix XGBoost reads.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NAN = math.nan
_OUT_OF_RANGE = "must be finite and within float32 range (NaN means missing)"
#: A challenger found as an artifact folder (not promoted through the registry) scores this share of customers.
IMPORTED_CHALLENGER_SHARE = 0.1
#: A challenger may score at most half of the traffic: beyond that it is the champion in all but name.
MAX_CHALLENGER_SHARE = 0.5
DEFAULT_TOP_K = 5
MAX_TOP_K = 50


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
    offer_categories: Mapping[str, str] = field(default_factory=dict)


_NO_CATEGORIES: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class OfferColumns:
    """Every candidate's offer features as one dense block (`ScoreRequest.offer_columns` / `offer_values`): numeric
    feature names, and row-major values, one row per candidate in candidate order."""

    names: Sequence[str] = ()
    values: Sequence[float] = ()


NO_OFFER_COLUMNS = OfferColumns()


class FeatureSchema:
    """A model's input features mapped onto its matrix columns, computed once per loaded model.

    Numeric features fill one column; a categorical feature is one-hot encoded over its levels (all NaN when the
    request leaves it out). Each request map is read exactly once, checking every value while filling the row:
    iterating a protobuf map costs ~0.25 us per entry, more than the rest of the assembly.
    """

    def __init__(
        self,
        features: Sequence[FeatureSpec] | Sequence[str],
        *,
        allows_missing: bool = True,
        reject_unknown: bool = True,
        model: str = "the model",
    ) -> None:
        specs = tuple(f if isinstance(f, FeatureSpec) else FeatureSpec(f) for f in features)
        check_feature_names([spec.name for spec in specs])
        self.features = specs
        self.names: tuple[str, ...] = model_columns(specs)
        check_feature_names(self.names)
        self.allows_missing = allows_missing
        self.reject_unknown = reject_unknown
        self.model = model
        self.columns: dict[str, int] = {}
        #: categorical feature -> (first column, number of levels, level -> column)
        self.categorical: dict[str, tuple[int, int, dict[str, int]]] = {}
        #: column -> input feature it belongs to (for missing-value messages and explanations)
        self.owner: list[int] = []
        column = 0
        for index, spec in enumerate(specs):
            if spec.kind is FeatureKind.NUMERIC:
                self.columns[spec.name] = column
            else:
                levels = {level: column + i for i, level in enumerate(spec.levels)}
                self.categorical[spec.name] = (column, len(spec.levels), levels)
            self.owner.extend([index] * len(spec.columns))
            column += len(spec.columns)

    def _fill(self, row: list[float], features: Mapping[str, float]) -> tuple[str, str] | None:
        """Writes the numeric features into `row`; returns (feature, reason) for the first bad one, if any."""
        columns = self.columns
        for name, value in features.items():
            if abs(value) > _FLOAT32_MAX:  # inf, or finite but inf once float32; NaN compares false (missing)
                return name, _OUT_OF_RANGE
            column = columns.get(name)
            if column is not None:
                row[column] = value
            elif name in self.categorical:
                return name, "is categorical in this model: send its level as text in the categories map"
            elif self.reject_unknown:
                return name, f"is not a feature of {self.model}"
        return None

    def _fill_categories(self, row: list[float], categories: Mapping[str, str]) -> tuple[str, str] | None:
        for name, level in categories.items():
            spec = self.categorical.get(name)
            if spec is None:
                if name in self.columns:
                    return name, "is numeric in this model: send it in the features map"
                if self.reject_unknown:
                    return name, f"is not a feature of {self.model}"
                continue
            first, count, levels = spec
            column = levels.get(level)
            if column is None:
                return name, f"level {level!r} is unknown to {self.model}"
            row[first : first + count] = [0.0] * count
            row[column] = 1.0
        return None

    def score_matrix(
        self,
        customer_features: Mapping[str, float],
        candidates: Sequence[Candidate],
        customer_categories: Mapping[str, str] = _NO_CATEGORIES,
        offer_columns: OfferColumns = NO_OFFER_COLUMNS,
    ) -> np.ndarray:
        """N candidates x F columns, float32: the customer's row joined with each offer's features (from the
        candidates' maps or, the fast path, from `offer_columns`).

        An offer feature wins over a customer feature of the same name; features nobody sent are NaN (missing).
        A value that is not finite is rejected naming it, e.g. `candidates[3].offer_features[offer_value]`.
        """
        customer_row = [_NAN] * len(self.names)
        if (bad := self._fill(customer_row, customer_features)) is not None:
            raise InvalidArgument(f"customer_features[{bad[0]}]", bad[1])
        if customer_categories and (bad := self._fill_categories(customer_row, customer_categories)) is not None:
            raise InvalidArgument(f"customer_categories[{bad[0]}]", bad[1])
        dense = bool(offer_columns.names)
        rows, own_rows = [], False
        for i, candidate in enumerate(candidates):
            features = candidate.offer_features
            categories = getattr(candidate, "offer_categories", None)
            if dense and features:
                raise InvalidArgument(f"candidates[{i}].offer_features", "must be empty when offer_columns is set")
            if not features and not categories:
                rows.append(customer_row)  # np.array copies: the rows may share one list
                continue
            row = customer_row.copy()
            if (bad := self._fill(row, features)) is not None:
                raise InvalidArgument(f"candidates[{i}].offer_features[{bad[0]}]", bad[1])
            if categories and (bad := self._fill_categories(row, categories)) is not None:
                raise InvalidArgument(f"candidates[{i}].offer_categories[{bad[0]}]", bad[1])
            rows.append(row)
            own_rows = True
        if own_rows:
            matrix = np.array(rows, dtype=np.float32)
        else:  # every row is the customer's (the column block fills the rest): one row, repeated
            matrix = np.tile(np.array(customer_row, dtype=np.float32), (len(rows), 1))
        if dense:
            self._fill_offer_columns(matrix, offer_columns)
        elif offer_columns.values:
            raise InvalidArgument("offer_values", "must be empty when offer_columns is")
        if not self.allows_missing:
            self._require_complete(matrix, lambda row: f"candidates[{row}]")
        return matrix

    def _fill_offer_columns(self, matrix: np.ndarray, offer_columns: OfferColumns) -> None:
        names = offer_columns.names
        rows, width = matrix.shape[0], len(names)
        values = np.array(offer_columns.values, dtype=np.float64)  # a packed repeated field converts in one go
        if values.size != rows * width:
            raise InvalidArgument(
                "offer_values", f"must hold {width} values (one per offer column) for each of the {rows} candidates"
                f" ({rows * width}), got {values.size}"
            )
        values = values.reshape(rows, width)
        self._check_dense(names, values, "offer_columns", "offer_values")
        sources, targets = [], []
        for j, name in enumerate(names):
            if (column := self.columns.get(name)) is not None:
                sources.append(j)
                targets.append(column)
            elif name in self.categorical:
                raise InvalidArgument(f"offer_columns[{j}]", f"{name} is categorical in this model: send its level as"
                                      " text in the candidates' offer_categories")
            elif self.reject_unknown:
                raise InvalidArgument(f"offer_columns[{j}]", f"{name} is not a feature of {self.model}")
        matrix[:, targets] = values[:, sources]

    @staticmethod
    def _check_dense(names: Sequence[str], values: np.ndarray, names_field: str, values_field: str) -> None:
        """A dense block (rows x len(names)) names each column once and holds only values float32 can hold."""
        seen: set[str] = set()
        for j, name in enumerate(names):
            if name in seen:
                raise InvalidArgument(f"{names_field}[{j}]", f"{name} appears twice")
            seen.add(name)
        out_of_range = np.abs(values) > _FLOAT32_MAX  # NaN compares false: a missing value
        if out_of_range.any():
            row, j = (int(i) for i in np.argwhere(out_of_range)[0])
            raise InvalidArgument(f"{values_field}[{row * len(names) + j}]", f"{names[j]} {_OUT_OF_RANGE}")

    def _require_complete(self, matrix: np.ndarray, where: Callable[[int], str]) -> None:
        missing = np.isnan(matrix)
        if missing.any():
            row, column = (int(i) for i in np.argwhere(missing)[0])
            feature = self.features[self.owner[column]].name
            raise InvalidArgument(
                where(row), f"feature {feature} is missing and {self.model} was trained without missing values"
            )

    def batch_matrix(self, columns: Sequence[str], values: np.ndarray) -> np.ndarray:
        """The model matrix of a dense batch: `values` is rows x len(columns), float64, categorical as level index."""
        rows = values.shape[0]
        matrix = np.full((rows, len(self.names)), np.nan, dtype=np.float32)
        self._check_dense(columns, values, "columns", "values")
        for j, name in enumerate(columns):
            column = values[:, j]
            if (target := self.columns.get(name)) is not None:
                matrix[:, target] = column
            elif (spec := self.categorical.get(name)) is not None:
                first, count, _ = spec
                present = ~np.isnan(column)
                codes = column[present]
                bad = (codes < 0) | (codes >= count) | (codes != np.floor(codes))
                if bad.any():
                    row = int(np.flatnonzero(present)[int(np.flatnonzero(bad)[0])])
                    raise InvalidArgument(
                        f"values[{row * len(columns) + j}]", f"{name} must be a level index 0..{count - 1} or NaN"
                    )
                block = np.full((rows, count), np.nan, dtype=np.float32)
                block[present] = 0.0
                block[np.flatnonzero(present), codes.astype(np.int64)] = 1.0
                matrix[:, first : first + count] = block
            elif self.reject_unknown:
                raise InvalidArgument(f"columns[{j}]", f"{name} is not a feature of {self.model}")
        if not self.allows_missing:
            self._require_complete(matrix, lambda row: f"values (row {row})")
        return matrix

    def training_matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """One float32 row per mapping (unknown names ignored); raises ValueError naming a value float32 cannot hold."""
        lenient = FeatureSchema(self.features, reject_unknown=False) if self.reject_unknown else self
        filled = []
        for i, features in enumerate(rows):
            row = [_NAN] * len(self.names)
            if (bad := lenient._fill(row, features)) is not None:
                raise ValueError(f"rows[{i}][{bad[0]}] is infinite or beyond float32 range")
            filled.append(row)
        return np.array(filled, dtype=np.float32).reshape(len(rows), len(self.names))

    def explain_row(self, matrix_row: np.ndarray, contributions: np.ndarray, top_k: int) -> list[Contribution]:
        """The input features' contributions (one-hot columns folded into their feature), largest effect first."""
        totals = np.zeros(len(self.features))
        np.add.at(totals, self.owner, contributions[: len(self.names)])
        order = sorted(range(len(self.features)), key=lambda i: (-abs(totals[i]), i))
        out = []
        for index in order[:top_k]:
            spec = self.features[index]
            out.append(Contribution(spec.name, _label(spec.name), self._value_text(spec, matrix_row), float(totals[index])))
        return out

    def _value_text(self, spec: FeatureSpec, matrix_row: np.ndarray) -> str:
        if spec.kind is FeatureKind.NUMERIC:
            value = float(matrix_row[self.columns[spec.name]])
            return "missing" if math.isnan(value) else f"{value:g}"
        first, count, _ = self.categorical[spec.name]
        block = matrix_row[first : first + count]
        hot = np.flatnonzero(block == 1.0)
        return spec.levels[int(hot[0])] if hot.size else "missing"


def _label(name: str) -> str:
    """A readable label: `days_since_last_purchase` -> `days since last purchase`."""
    return name.replace("_", " ").strip()


@dataclass(frozen=True, slots=True)
class Contribution:
    """One feature's SHAP contribution (log-odds) to one row's score."""

    feature: str
    label: str
    value: str
    contribution: float


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A row of the model registry: the version, its status and its model card."""

    name: str
    use_case: str
    version: str
    status: ModelStatus
    feature_names: tuple[str, ...]
    metrics: dict[str, float]
    training_rows: int
    trained_at: datetime
    artifact_path: str  # the artifact store key, `{use_case}/{version}`
    registered_at: datetime
    features: tuple[FeatureSpec, ...] = ()
    allows_missing: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    training_window: tuple[datetime, datetime] | None = None
    row_counts: dict[str, int] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    traffic_share: float = 0.0
    status_changed_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.features:
            object.__setattr__(self, "features", numeric_features(self.feature_names))

    @property
    def key(self) -> tuple[str, str]:
        return self.use_case, self.version

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
            features=meta.features,
            allows_missing=meta.allows_missing,
            params=dict(meta.params),
            parent_version=meta.parent_version,
            training_window=meta.training_window,
            row_counts=dict(meta.row_counts),
            card=dict(meta.card),
            traffic_share=IMPORTED_CHALLENGER_SHARE if meta.status is ModelStatus.CHALLENGER else 0.0,
            status_changed_at=registered_at,
        )


@dataclass(frozen=True, slots=True)
class ServingModel:
    """A version loaded for serving."""

    model: RegisteredModel
    booster: xgb.Booster
    schema: FeatureSchema


@dataclass(frozen=True, slots=True)
class ServingSlot:
    """What serves one use case: the champion, and a challenger for `share` of the customers."""

    champion: ServingModel | None
    challenger: ServingModel | None = None
    share: float = 0.0

    def pick(self, use_case: str, customer_id: str) -> ServingModel | None:
        """The challenger for the customers hashed into its share (same customer, same version), else the champion."""
        if self.challenger is not None and customer_id and customer_bucket(use_case, customer_id) < self.share:
            return self.challenger
        return self.champion


def customer_bucket(use_case: str, customer_id: str) -> float:
    """A stable number in [0, 1) per (use case, customer): the champion/challenger split, identical in every process."""
    digest = hashlib.blake2b(f"{use_case}\x00{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class ServingState:
    """Everything Score needs, swapped as one reference."""

    slots: Mapping[str, ServingSlot]
    use_cases: frozenset[str]
    #: (use_case, version, status, share) of every serving row: a changed signature means a reload.
    signature: tuple[tuple[str, str, str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Scores:
    """The answer to Score: the version that scored and one probability per candidate, in request order."""

    model_name: str
    model_version: str
    offer_ids: list[str]
    probabilities: list[float]
    model_status: ModelStatus = ModelStatus.CHAMPION


@dataclass(frozen=True, slots=True)
class OfferExplanation:
    offer_id: str
    probability: float
    base_log_odds: float
    contributions: list[Contribution]


@dataclass(frozen=True, slots=True)
class Explanation:
    model_name: str
    model_version: str
    model_status: ModelStatus
    offers: list[OfferExplanation]


@dataclass(frozen=True, slots=True)
class BatchChunk:
    model_version: str
    start_row: int
    predictions: np.ndarray


class ModelRegistry(Protocol):
    """Storage port: the registry table. Status changes are atomic and keep one champion per use case."""

    async def registered_keys(self) -> set[tuple[str, str]]:
        """(use_case, version) of every registered model."""
        ...

    async def register(self, models: Sequence[RegisteredModel], now: datetime) -> list[RegisteredModel]:
        """Adds the models not registered yet, in one transaction; returns those actually added.

        A champion among them replaces the use case's champion (which is retired); a challenger replaces the
        challenger (which goes back to candidate). Several new champions of one use case: the newest trained wins.
        """
        ...

    async def models(
        self, use_case: str | None = None, statuses: Sequence[ModelStatus] = ()
    ) -> list[RegisteredModel]:
        """Registered models (of one use case, or all) by use case, then newest registered first."""
        ...

    async def get(self, use_case: str, version: str) -> RegisteredModel | None:
        """One version, or None."""
        ...

    async def serving(self) -> list[RegisteredModel]:
        """The champion and challenger rows of every use case."""
        ...

    async def promote(
        self, use_case: str, version: str, target: ModelStatus, share: float, now: datetime
    ) -> tuple[RegisteredModel, str | None]:
        """In one transaction: the version takes the role; returns it and the version that held the role, if any."""
        ...

    async def retire(self, use_case: str, version: str, now: datetime) -> RegisteredModel:
        """Retires a version that is not the champion."""
        ...


BoosterLoader = Callable[[str, Sequence[str]], xgb.Booster]


class ScoringService:
    """The scoring use cases: registry lifecycle, hot reload, Score, Explain, ScoreBatch."""

    def __init__(
        self,
        registry: ModelRegistry,
        store: ArtifactStore,
        *,
        default_use_case: str,
        max_candidates: int,
        reject_unknown_features: bool = True,
        batch_chunk_rows: int = 8192,
        clock: Callable[[], datetime] = utcnow,
        loader: BoosterLoader | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.default_use_case = default_use_case
        self.max_candidates = max_candidates
        self.reject_unknown_features = reject_unknown_features
        self.batch_chunk_rows = batch_chunk_rows
        self.clock = clock
        self.loader: BoosterLoader = loader or (lambda key, names: store.load(key, names, nthread=1))
        self._state = ServingState({}, frozenset({default_use_case}))
        self._sync_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        #: Loaded versions that are not serving (ScoreBatch of a candidate), by key; small, cleared on sync.
        self._extra: dict[tuple[str, str], ServingModel] = {}

    # ------------------------------------------------------------------ serving state

    @property
    def champions(self) -> dict[str, ServingModel]:
        """The loaded champion of each use case that has one."""
        return {uc: slot.champion for uc, slot in self._state.slots.items() if slot.champion is not None}

    @property
    def state(self) -> ServingState:
        return self._state

    async def import_artifacts(self) -> list[RegisteredModel]:
        """Registers artifacts found in the store that the registry does not know (e.g. written by `demo seed`)."""
        artifacts = await asyncio.to_thread(self.store.list)
        known = await self.registry.registered_keys()
        now = self.clock()
        new = [RegisteredModel.from_artifact(a, now) for a in artifacts if (a.metadata.use_case, a.metadata.version) not in known]
        if not new:
            return []
        added = await self.registry.register(new, now)
        if added:
            log.info("registered %d model version(s)", len(added), extra={"versions": [m.artifact_path for m in added]})
        return added

    async def refresh(self) -> None:
        """Imports new artifacts, then loads what the registry says should serve (see `sync`)."""
        await self.import_artifacts()
        await self.sync(force=True)

    async def sync(self, *, force: bool = False) -> bool:
        """Loads the registry's champions and challengers if they changed; returns whether serving switched.

        Boosters are loaded in a worker thread; the new state replaces the old only once everything loaded, so a
        failed load leaves serving untouched (and the next poll retries).
        """
        async with self._sync_lock:
            serving = await self.registry.serving()
            signature = tuple(sorted((m.use_case, m.version, m.status.value, m.traffic_share) for m in serving))
            if signature == self._state.signature and not force:
                return False
            loaded = dict(self._extra)  # e.g. a version loaded (and so checked) by `promote` just before
            loaded.update(
                (model.model.key, model)
                for slot in self._state.slots.values()
                for model in (slot.champion, slot.challenger)
                if model is not None
            )
            champions: dict[str, ServingModel] = {}
            challengers: dict[str, tuple[ServingModel, float]] = {}
            for model in serving:
                current = loaded.get(model.key)
                if current is not None and current.model.artifact_path == model.artifact_path:
                    ready = ServingModel(model, current.booster, current.schema)
                else:
                    ready = await self._load(model)
                if model.status is ModelStatus.CHAMPION:
                    champions[model.use_case] = ready
                else:
                    challengers[model.use_case] = (ready, model.traffic_share)
            slots = {}
            for use_case in {*champions, *challengers}:
                challenger = challengers.get(use_case)
                slots[use_case] = ServingSlot(
                    champions.get(use_case), challenger[0] if challenger else None, challenger[1] if challenger else 0.0
                )
            known = {uc for uc, _ in await self.registry.registered_keys()}
            previous = self._state.signature
            self._state = ServingState(slots, frozenset({self.default_use_case, *known}), signature)
            self._extra.clear()
            if signature != previous:
                for model in serving:
                    log.info("serving %s %s %s for %s", model.status.value, model.name, model.version, model.use_case)
            if self.default_use_case not in champions:
                log.warning("no champion model for the default use case %s: Score will refuse it", self.default_use_case)
            return True

    async def _load(self, model: RegisteredModel) -> ServingModel:
        booster = await asyncio.to_thread(self.loader, model.artifact_path, model.feature_names)
        schema = FeatureSchema(
            model.features,
            allows_missing=model.allows_missing,
            reject_unknown=self.reject_unknown_features,
            model=f"model {model.use_case}/{model.version}",
        )
        return ServingModel(model, booster, schema)

    def start_polling(self, interval: float) -> None:
        """Polls the registry every `interval` seconds so promotions made elsewhere are served here too."""
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(interval), name="scoring-registry-poll")

    async def stop_polling(self) -> None:
        await stop_task(self._poller)
        self._poller = None

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed poll keeps serving the current models; the next one retries
                log.exception("model registry poll failed; still serving the previous models")

    # ------------------------------------------------------------------ requests

    def _serving(self, use_case: str, customer_id: str) -> ServingModel:
        state = self._state
        slot = state.slots.get(use_case)
        serving = slot.pick(use_case, customer_id) if slot is not None else None
        if serving is not None:
            return serving
        if use_case in state.use_cases:
            raise FailedPrecondition(f"no champion model for use case {use_case}")
        raise NotFound(f"use case {use_case} has no registered models")

    def _check_candidates(self, candidates: Sequence[Candidate]) -> None:
        count = len(candidates)
        if count == 0:
            raise InvalidArgument("candidates", "at least one candidate is required")
        if count > self.max_candidates:
            raise InvalidArgument("candidates", f"at most {self.max_candidates} candidates per call, got {count}")
        for i, candidate in enumerate(candidates):
            if not candidate.offer_id.strip():
                raise InvalidArgument(f"candidates[{i}].offer_id", "is required")

    def score(
        self,
        use_case: str,
        customer_features: Mapping[str, float],
        candidates: Sequence[Candidate],
        customer_id: str = "",
        customer_categories: Mapping[str, str] = _NO_CATEGORIES,
        offer_columns: OfferColumns = NO_OFFER_COLUMNS,
    ) -> Scores:
        """Scores every candidate for the customer with one model call; a bad request never reaches the model."""
        self._check_candidates(candidates)
        use_case = use_case or self.default_use_case
        serving = self._serving(use_case, customer_id)
        # Feature values are checked while the matrix is built (one read of each map), so after the use case.
        matrix = serving.schema.score_matrix(customer_features, candidates, customer_categories, offer_columns)
        probabilities = serving.booster.inplace_predict(matrix, validate_features=False)
        return Scores(
            serving.model.name,
            serving.model.version,
            [candidate.offer_id for candidate in candidates],
            probabilities.tolist(),
            serving.model.status,
        )

    async def explain(
        self,
        use_case: str,
        customer_features: Mapping[str, float],
        candidates: Sequence[Candidate],
        customer_id: str = "",
        customer_categories: Mapping[str, str] = _NO_CATEGORIES,
        top_k: int = 0,
        offer_columns: OfferColumns = NO_OFFER_COLUMNS,
    ) -> Explanation:
        """SHAP contributions (XGBoost `pred_contribs`) per candidate, top `top_k` input features each."""
        if top_k < 0 or top_k > MAX_TOP_K:
            raise InvalidArgument("top_k", f"must be 0..{MAX_TOP_K}")
        self._check_candidates(candidates)
        use_case = use_case or self.default_use_case
        serving = self._serving(use_case, customer_id)
        schema = serving.schema
        matrix = schema.score_matrix(customer_features, candidates, customer_categories, offer_columns)

        def contribute() -> tuple[np.ndarray, np.ndarray]:
            data = xgb.DMatrix(matrix, feature_names=list(schema.names), nthread=1)
            return (
                serving.booster.inplace_predict(matrix, validate_features=False),
                serving.booster.predict(data, pred_contribs=True, validate_features=False),
            )

        probabilities, contributions = await asyncio.to_thread(contribute)
        offers = [
            OfferExplanation(
                candidate.offer_id,
                float(probabilities[i]),
                float(contributions[i, -1]),
                schema.explain_row(matrix[i], contributions[i], top_k or DEFAULT_TOP_K),
            )
            for i, candidate in enumerate(candidates)
        ]
        return Explanation(serving.model.name, serving.model.version, serving.model.status, offers)

    async def score_batch(
        self, use_case: str, version: str, columns: Sequence[str], values: np.ndarray
    ) -> AsyncIterator[BatchChunk]:
        """Scores a dense batch with one version (the champion, or `version`), streaming chunks of predictions."""
        use_case = use_case or self.default_use_case
        if not columns:
            raise InvalidArgument("columns", "at least one column is required")
        if values.size % len(columns):
            raise InvalidArgument("values", f"length {values.size} is not a multiple of {len(columns)} columns")
        serving = await self._batch_model(use_case, version)
        matrix = await asyncio.to_thread(serving.schema.batch_matrix, columns, values.reshape(-1, len(columns)))
        booster = serving.booster
        for start in range(0, matrix.shape[0], self.batch_chunk_rows):
            chunk = matrix[start : start + self.batch_chunk_rows]
            predictions = await asyncio.to_thread(booster.inplace_predict, chunk, validate_features=False)
            yield BatchChunk(serving.model.version, start, predictions)

    async def _batch_model(self, use_case: str, version: str) -> ServingModel:
        if not version:
            slot = self._state.slots.get(use_case)
            if slot is None or slot.champion is None:
                self._serving(use_case, "")  # raises the right error
            return slot.champion  # type: ignore[union-attr]
        for slot in self._state.slots.values():
            for serving in (slot.champion, slot.challenger):
                if serving is not None and serving.model.key == (use_case, version):
                    return serving
        if (cached := self._extra.get((use_case, version))) is not None:
            return cached
        model = await self.get_model(use_case, version)
        if model.status is ModelStatus.RETIRED:
            raise FailedPrecondition(f"model {use_case}/{version} is retired")
        loaded = await self._load(model)
        self._extra[model.key] = loaded
        return loaded

    # ------------------------------------------------------------------ registry

    async def list_models(self, use_case: str, statuses: Sequence[ModelStatus] = ()) -> list[RegisteredModel]:
        """Registered models of one use case (empty: all), newest first within each use case."""
        return await self.registry.models(use_case or None, statuses)

    async def get_model(self, use_case: str, version: str) -> RegisteredModel:
        if not use_case:
            raise InvalidArgument("use_case", "is required")
        if not version:
            raise InvalidArgument("version", "is required")
        model = await self.registry.get(use_case, version)
        if model is None:
            raise NotFound(f"model {use_case}/{version} is not registered")
        return model

    async def promote(
        self, use_case: str, version: str, target: ModelStatus, share: float = 0.0
    ) -> tuple[RegisteredModel, str | None]:
        """Champion or challenger (with a traffic share), atomically; this process serves it before returning."""
        if target is ModelStatus.CHAMPION:
            if share:
                raise InvalidArgument("traffic_share", "only a challenger takes a traffic share")
        elif target is ModelStatus.CHALLENGER:
            if not (math.isfinite(share) and 0.0 < share <= MAX_CHALLENGER_SHARE):
                raise InvalidArgument("traffic_share", f"must be > 0 and <= {MAX_CHALLENGER_SHARE} for a challenger")
        else:
            raise InvalidArgument("target", "must be champion or challenger")
        model = await self.get_model(use_case, version)
        # Load it before the switch is visible: a broken artifact is refused here, not found by every replica later.
        self._extra[model.key] = await self._load(model)
        promoted, replaced = await self.registry.promote(use_case, version, target, share, self.clock())
        await self.sync()
        log.info("promoted %s/%s to %s", use_case, version, target.value, extra={"replaced": replaced})
        return promoted, replaced

    async def retire(self, use_case: str, version: str) -> RegisteredModel:
        await self.get_model(use_case, version)
        retired = await self.registry.retire(use_case, version, self.clock())
        await self.sync()
        return retired
