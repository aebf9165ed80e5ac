"""Offline training of binary XGBoost models into artifact folders, and the metrics that judge them.

Used by the demo seeder and `nextbest model train`; never on a request path. Training is synchronous and
CPU-bound (two threads): async callers run it in a worker thread. Metrics are computed with numpy alone (the AUC by
the rank formula), so training needs no scikit-learn.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import xgboost as xgb

from services.scoring.artifacts import ModelMetadata, ModelStatus, write_artifact
from services.scoring.domain import FeatureSchema

VALIDATION_FRACTION = 0.2
MAX_TREES = 200
EARLY_STOPPING_ROUNDS = 20
#: Fewer rows than this cannot give a validation set worth stopping on.
MIN_ROWS = 10
_EPS = 1e-15


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula; tied scores share their average rank."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("labels and scores must be 1-D and of equal length")
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    order = np.argsort(s, kind="mergesort")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(s.size, dtype=np.float64)
    # 1-based ranks first+1 .. first+count of a tie group average to first + (count + 1) / 2.
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray) -> float:
    """Mean binary cross-entropy, with probabilities clipped away from 0 and 1."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def stratified_split(labels: np.ndarray, seed: int, fraction: float = VALIDATION_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row indices; each class is split by `fraction` so both sides see both classes."""
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for label in (0, 1):
        rows = np.flatnonzero(labels == label)
        rng.shuffle(rows)
        cut = min(max(1, round(rows.size * fraction)), rows.size - 1)
        valid.append(rows[:cut])
        train.append(rows[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(valid))


def new_version(now: datetime) -> str:
    """`YYYYMMDD-HHMMSS-xxxxxx`: sorts by time, and the random suffix keeps same-second trainings apart."""
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def train_binary_model(
    rows: Sequence[Mapping[str, float]],
    labels: Sequence[int],
    *,
    feature_names: Sequence[str],
    models_dir: Path,
    use_case: str = "offer_propensity",
    name: str = "offer-propensity-xgb",
    status: str = "champion",
    version: str | None = None,
    seed: int = 7,
    parent_version: str | None = None,
) -> ModelMetadata:
    """Trains a binary:logistic model on `rows` (features by name) and saves it as a new artifact folder.

    Missing features are NaN (XGBoost learns a default direction for them); names not in `feature_names` are
    ignored. 20% of the rows (stratified, seeded) are held out for early stopping and for the reported metrics.
    Raises ValueError for unusable input (too few rows, one class only, labels other than 0/1, infinite values).
    """
    model_status = ModelStatus(status)
    schema = FeatureSchema(feature_names)
    if len(rows) != len(labels):
        raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
    if len(rows) < MIN_ROWS:
        raise ValueError(f"at least {MIN_ROWS} rows are needed, got {len(rows)}")
    y = np.asarray(labels)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    y = y.astype(np.float32)
    if min(int((y == 1).sum()), int((y == 0).sum())) < 2:
        raise ValueError("each class needs at least two rows (one to train on, one to validate with)")
    x = schema.training_matrix(rows)

    train_idx, valid_idx = stratified_split(y, seed)
    dtrain = xgb.DMatrix(x[train_idx], label=y[train_idx], feature_names=list(schema.names))
    dvalid = xgb.DMatrix(x[valid_idx], label=y[valid_idx], feature_names=list(schema.names))
    params = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_depth": 5,
        "eta": 0.1,
        "seed": seed,
        "nthread": 2,  # training may use both cores; serving loads with nthread=1
    }
    trained = xgb.train(
        params,
        dtrain,
        num_boost_round=MAX_TREES,
        evals=[(dvalid, "validation")],
        early_stopping_rounds=EARLY_STOPPING_ROUNDS,
        verbose_eval=False,
    )
    # Keep only the trees up to the best round, so serving needs no iteration_range.
    trees = trained.best_iteration + 1
    booster = trained[:trees]

    valid_p = booster.inplace_predict(x[valid_idx])
    y_valid = y[valid_idx]
    now = datetime.now(UTC)
    metadata = ModelMetadata(
        name=name,
        use_case=use_case,
        version=version or new_version(now),
        status=model_status,
        feature_names=schema.names,
        metrics={
            "auc": roc_auc(y_valid, valid_p),
            "logloss": log_loss(y_valid, valid_p),
            "base_rate": float(y_valid.mean(dtype=np.float64)),
            "validation_rows": float(valid_idx.size),
        },
        training_rows=int(train_idx.size),
        trained_at=now,
        params={
            **params,
            "max_trees": MAX_TREES,
            "early_stopping_rounds": EARLY_STOPPING_ROUNDS,
            "trees": trees,
            "validation_fraction": VALIDATION_FRACTION,
        },
        parent_version=parent_version,
    )
    write_artifact(models_dir, metadata, booster)
    return metadata
