"""Offline model work for `nextbest model train` and scheduled retraining: train, evaluate, register a candidate.

Runs next to the registry database and artifact store (a CLI, a cron job), not inside the serving path. Training is
CPU-bound and runs in a worker thread; the registry is written through the same adapter the service uses, so the new
version appears as a candidate in `nextbest model list` at once (and is served only after `PromoteModel`).

Auto-promotion (`--auto-promote`, scheduled retraining) scores the serving champion on the candidate's own hold-out
rows and promotes the candidate only if it beats the champion by the margin on the use case's own metric:
classifiers (offer propensity, churn risk) by AUC, `candidate >= champion + margin` (AUC points); the lifetime-value
regression by RMSE, `candidate <= champion x (1 - margin)` (a relative error reduction, e.g. 0.005 = 0.5% lower).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from libs.db import create_engine, migrate
from libs.protoconv import utcnow
from services.scoring.artifacts import (
    Artifact,
    ArtifactStore,
    FeatureSpec,
    LocalArtifactStore,
    ModelMetadata,
    ModelStatus,
    model_columns,
)
from services.scoring.churn import train_churn
from services.scoring.domain import FeatureSchema, RegisteredModel
from services.scoring.lifetime_value import (
    LTV_FEATURES,
    HistoryModelResult,
    Transaction,
    regression_metrics,
    train_lifetime_value,
)
from services.scoring.settings import ScoringSettings
from services.scoring.storage import SqlModelRegistry
from services.scoring.tabular import Dataset
from services.scoring.training import (
    Split,
    TrainingResult,
    new_version,
    roc_auc,
    stratified_three_way,
    time_split,
    train_and_evaluate,
)

MIGRATIONS = Path(__file__).parent / "migrations"


@asynccontextmanager
async def registry_for(settings: ScoringSettings):
    """The registry (migrated) and artifact store the scoring service with these settings uses."""
    engine = create_engine(settings.resolved_database_url, pool_size=2)
    try:
        await migrate(engine, MIGRATIONS, "alembic_version_scoring")
        yield SqlModelRegistry(engine), LocalArtifactStore(settings.models_dir)
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Trained:
    metadata: ModelMetadata
    result: TrainingResult
    #: The serving champion scored on the candidate's hold-out, when there is a champion.
    comparison: dict[str, Any] | None = None
    #: Whether the candidate was promoted to champion (only with auto-promotion).
    promoted: bool = False


def beats_champion(candidate: float, champion: float, margin: float, lower_is_better: bool) -> bool:
    """Whether the candidate's hold-out metric beats the champion's by the margin: an error (lower is better) must
    fall by the margin as a fraction of the champion's; a score such as AUC must rise by the margin in points."""
    if lower_is_better:
        return candidate <= champion * (1.0 - margin)
    return candidate >= champion + margin


def holdout_metric(metric: str, y: np.ndarray, predictions: np.ndarray) -> float:
    """"auc" of a classifier, or a regression error ("rmse", "mae") on hold-out labels."""
    if metric == "auc":
        return roc_auc(y, predictions)
    return regression_metrics(y, predictions)[metric]


def _champion_holdout_metric(store: ArtifactStore, champion: RegisteredModel, metric: str, x: np.ndarray,
                             columns: Sequence[str], y: np.ndarray) -> float:
    """The champion's metric on the candidate's hold-out rows (its columns picked by name; absent ones missing)."""
    booster = store.load(champion.artifact_path, champion.feature_names, nthread=2)
    position = {name: i for i, name in enumerate(columns)}
    matrix = np.full((y.size, len(champion.feature_names)), np.nan, dtype=np.float32)
    for j, name in enumerate(champion.feature_names):
        if name in position:
            matrix[:, j] = x[:, position[name]]
    return holdout_metric(metric, y, booster.inplace_predict(matrix, validate_features=False))


async def _compare(store: ArtifactStore, champion: RegisteredModel | None, metric: str, lower_is_better: bool,
                   candidate: float, x: np.ndarray, columns: Sequence[str], y: np.ndarray,
                   margin: float | None) -> dict[str, Any] | None:
    """The champion against the candidate on the candidate's hold-out (x, y), for the model card; None: no champion."""
    if champion is None:
        return None
    score = await asyncio.to_thread(_champion_holdout_metric, store, champion, metric, x, columns, y)
    return {"champion_version": champion.version, "metric": metric, "lower_is_better": lower_is_better,
            f"champion_{metric}": score, f"candidate_{metric}": candidate, "margin": margin}


def _promotes(comparison: dict[str, Any] | None, margin: float | None) -> bool:
    """Auto-promotion's verdict: with a margin, promote when there is no champion or the candidate beats it."""
    if margin is None:
        return False
    if comparison is None:
        return True
    metric = comparison["metric"]
    return beats_champion(comparison[f"candidate_{metric}"], comparison[f"champion_{metric}"], margin,
                          comparison["lower_is_better"])


async def _register(
    settings: ScoringSettings,
    build: Any,
    result: TrainingResult,
    x: np.ndarray,
    y: np.ndarray,
    auto_promote_margin: float | None,
) -> Trained:
    """Writes and registers the candidate; with a margin, promotes it if it beats the champion's hold-out AUC by it."""
    async with registry_for(settings) as (registry, store):
        champions = await registry.models(build["use_case"], [ModelStatus.CHAMPION])
        champion = champions[0] if champions else None
        rows = result.split.test
        comparison = await _compare(store, champion, "auc", False, result.metrics["auc"], x[rows],
                                    build["feature_names"], y[rows], auto_promote_margin)
        now = utcnow()
        metadata = ModelMetadata(
            **{**build, "card": {**build["card"], **({"champion_comparison": comparison} if comparison else {})}},
            version=new_version(now),
            status=ModelStatus.CANDIDATE,
            trained_at=now,
            parent_version=champion.version if champion else None,
        )
        await asyncio.to_thread(store.write, metadata, result.booster)
        folder = settings.models_dir / metadata.use_case / metadata.version
        await registry.register([RegisteredModel.from_artifact(Artifact(folder, metadata), now)], now)
        promoted = _promotes(comparison, auto_promote_margin)
        if promoted:
            # Every scoring process serves it within its registry poll interval.
            await registry.promote(metadata.use_case, metadata.version, ModelStatus.CHAMPION, 0.0, utcnow())
    return Trained(metadata, result, comparison, promoted)


def _plain(document: Any) -> Any:
    """Plain JSON types only (numpy scalars become floats), as the registry's JSON columns expect."""
    return json.loads(json.dumps(document, allow_nan=False))


def _card(result: TrainingResult, extra: Mapping[str, Any]) -> dict[str, Any]:
    return _plain({
        **extra,
        "split": result.split.kind,
        "evaluated_on": "hold-out (test) rows never used for training or early stopping",
        "baseline": {"model": "logistic regression (gblinear, standardised one-hot columns)",
                     "metrics": result.baseline_metrics},
        "beats_baseline": result.beats_baseline,
        **result.tables,
    })


def _row_counts(split: Split) -> dict[str, int]:
    return {"train": int(split.train.size), "validation": int(split.validation.size), "test": int(split.test.size)}


def _metrics(result: TrainingResult) -> dict[str, float]:
    return _plain({**result.metrics,
                   **{f"baseline_{k}": v for k, v in result.baseline_metrics.items() if k != "base_rate"}})


async def train_from_dataset(
    settings: ScoringSettings, use_case: str, dataset: Dataset, *, seed: int = 7,
    auto_promote_margin: float | None = None,
) -> Trained:
    """Stratified random hold-out, trees with early stopping, baseline; registers the candidate with its card."""
    split = stratified_three_way(dataset.y, seed)
    result = await asyncio.to_thread(train_and_evaluate, dataset.x, dataset.y, dataset.columns, split, seed=seed)
    card = _card(result, {
        "data": {"source": dataset.source, "label": dataset.label, "positive": dataset.positive,
                 "dropped": list(dataset.dropped), "renamed": dict(dataset.renamed), "rows": int(dataset.y.size),
                 "positive_rate": float(dataset.y.mean())},
    })
    build = dict(
        name=f"{use_case.replace('_', '-')}-xgb", use_case=use_case, feature_names=dataset.columns,
        features=dataset.features, metrics=_metrics(result), training_rows=int(split.train.size),
        row_counts=_row_counts(split), params=_plain(result.params), card=card, allows_missing=True,
    )
    return await _register(settings, build, result, dataset.x, dataset.y, auto_promote_margin)


async def train_from_rows(
    settings: ScoringSettings,
    use_case: str,
    rows: Sequence[Mapping[str, float]],
    labels: Sequence[int],
    times: Sequence[datetime],
    feature_names: Sequence[str],
    *,
    seed: int = 7,
    provenance: Mapping[str, Any] | None = None,
    auto_promote_margin: float | None = None,
) -> Trained:
    """Time-based split (oldest train, newest hold-out), early stopping, baseline; registers the candidate."""
    features = tuple(FeatureSpec(name) for name in feature_names)
    x = FeatureSchema(features, reject_unknown=False).training_matrix(rows)
    y = np.asarray(labels, dtype=np.float32)
    stamps = np.array([t.timestamp() for t in times])
    split = time_split(stamps)
    result = await asyncio.to_thread(train_and_evaluate, x, y, model_columns(features), split, seed=seed)
    window = (min(times), max(times))
    card = _card(result, {"data": {**(provenance or {}), "rows": len(rows), "positive_rate": float(y.mean())}})
    build = dict(
        name=f"{use_case.replace('_', '-')}-xgb", use_case=use_case, feature_names=model_columns(features),
        features=features, metrics=_metrics(result), training_rows=int(split.train.size),
        row_counts=_row_counts(split), params=_plain(result.params), card=card, allows_missing=True,
        training_window=window,
    )
    return await _register(settings, build, result, x, y, auto_promote_margin)


@dataclass(frozen=True)
class TrainedHistoryModel:
    """A candidate trained on purchase histories (lifetime value, churn risk), as `Trained` is for offer models."""

    metadata: ModelMetadata
    result: HistoryModelResult
    #: The serving champion scored on the candidate's hold-out, when there is a champion.
    comparison: dict[str, Any] | None = None
    #: Whether the candidate was promoted to champion (only with auto-promotion).
    promoted: bool = False


TrainedLtv = TrainedChurn = TrainedHistoryModel


async def train_lifetime_value_candidate(
    settings: ScoringSettings, use_case: str, transactions: Sequence[Transaction], *, horizon_days: int = 365,
    seed: int = 7, source: str = "", auto_promote_margin: float | None = None,
) -> TrainedLtv:
    """Future net spend regression on a time split against the RFM baseline; registered as a candidate."""
    result = await asyncio.to_thread(
        train_lifetime_value, transactions, horizon=timedelta(days=horizon_days), seed=seed
    )
    return await _register_history_model(
        settings, use_case, result, horizon_days, auto_promote_margin,
        data={"source": source or "transactions", "transactions": len(transactions)},
        label=f"net spend (orders minus returns) in the {horizon_days} days after the cut-off",
        baseline="RFM quintile cells (mean future spend per cell)",
    )


async def _register_history_model(
    settings: ScoringSettings, use_case: str, result: HistoryModelResult, horizon_days: int,
    auto_promote_margin: float | None, *, data: dict[str, Any], label: str, baseline: str,
) -> TrainedHistoryModel:
    """Register a model trained on transaction histories (RFM inputs, time split) as a candidate with its model card;
    with a margin, promote it if it beats the champion on its deciding metric (AUC, or RMSE as a relative reduction)."""
    metrics = _plain({**result.metrics, **{f"baseline_{k}": v for k, v in result.baseline_metrics.items()}})
    card = _plain({
        "data": data,
        "label": label,
        "split": "time",
        "train_cutoff": result.train_cutoff.isoformat(),
        "evaluation_cutoff": result.eval_cutoff.isoformat(),
        "baseline": {"model": baseline, "metrics": result.baseline_metrics},
        "beats_baseline": result.beats_baseline,
    })
    async with registry_for(settings) as (registry, store):
        champions = await registry.models(use_case, [ModelStatus.CHAMPION])
        champion = champions[0] if champions else None
        metric = result.deciding_metric
        comparison = await _compare(store, champion, metric, result.lower_is_better, result.metrics[metric],
                                    result.holdout_x, LTV_FEATURES, result.holdout_y, auto_promote_margin)
        now = utcnow()
        metadata = ModelMetadata(
            name=f"{use_case.replace('_', '-')}-xgb", use_case=use_case, version=new_version(now),
            status=ModelStatus.CANDIDATE, feature_names=LTV_FEATURES, metrics=metrics,
            training_rows=result.row_counts["train"], trained_at=now, params=_plain(result.params),
            parent_version=champion.version if champion else None, row_counts=result.row_counts,
            training_window=(result.train_cutoff - timedelta(days=horizon_days), result.eval_cutoff),
            card={**card, **({"champion_comparison": _plain(comparison)} if comparison else {})},
        )
        await asyncio.to_thread(store.write, metadata, result.booster)
        folder = settings.models_dir / metadata.use_case / metadata.version
        await registry.register([RegisteredModel.from_artifact(Artifact(folder, metadata), now)], now)
        promoted = _promotes(comparison, auto_promote_margin)
        if promoted:
            await registry.promote(metadata.use_case, metadata.version, ModelStatus.CHAMPION, 0.0, utcnow())
    return TrainedHistoryModel(metadata, result, comparison, promoted)


async def train_churn_candidate(
    settings: ScoringSettings, use_case: str, transactions: Sequence[Transaction], *, horizon_days: int = 90,
    seed: int = 7, source: str = "", auto_promote_margin: float | None = None,
) -> TrainedChurn:
    """No-order-within-the-horizon classifier on a time split against the recency baseline; a candidate."""
    result = await asyncio.to_thread(train_churn, transactions, horizon=timedelta(days=horizon_days), seed=seed)
    return await _register_history_model(
        settings, use_case, result, horizon_days, auto_promote_margin,
        data={"source": source or "transactions", "transactions": len(transactions)},
        label=f"churned: no order in the {horizon_days} days after the cut-off",
        baseline="recency alone (days since the last order)",
    )
