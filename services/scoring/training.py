"""Offline training of binary XGBoost models into artifact folders, and the metrics that judge them.

Used by the demo seeder and `nextbest model train`; never on a request path. Training is synchronous and
CPU-bound (two threads): async callers run it in a worker thread. Metrics are computed with numpy alone (the AUC by
the rank formula, PR-AUC as average precision, reliability and lift tables), so training needs no scikit-learn.
The logistic-regression baseline is XGBoost's linear booster on standardised columns (no extra dependency).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
        row_counts={"train": int(train_idx.size), "validation": int(valid_idx.size)},
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


# --------------------------------------------------------------------------------------------------- evaluation


def average_precision(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """PR-AUC as average precision: the mean of the precision at the rank of each positive (highest score first)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    if positives == 0:
        raise ValueError("average precision needs at least one positive label")
    order = np.argsort(-s, kind="mergesort")
    hits = np.cumsum(y[order])
    precision_at_hit = hits[y[order]] / (np.flatnonzero(y[order]) + 1)
    return float(precision_at_hit.sum() / positives)


def brier_score(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean((np.asarray(probabilities, dtype=np.float64) - y) ** 2))


def reliability_table(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Calibration: rows sorted by predicted probability into `bins` equal-count bins; predicted vs observed rate."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(p, kind="mergesort")
    table = []
    for number, part in enumerate(np.array_split(order, bins), start=1):
        if part.size == 0:
            continue
        table.append({
            "bin": number,
            "rows": int(part.size),
            "min_predicted": float(p[part].min()),
            "max_predicted": float(p[part].max()),
            "mean_predicted": float(p[part].mean()),
            "observed_rate": float(y[part].mean()),
        })
    return table


def expected_calibration_error(table: Sequence[Mapping[str, float]]) -> float:
    rows = sum(row["rows"] for row in table)
    return float(sum(row["rows"] * abs(row["mean_predicted"] - row["observed_rate"]) for row in table) / rows)


def lift_table(labels: np.ndarray, scores: np.ndarray, groups: int = 10) -> list[dict[str, float]]:
    """Lift by decile: rows sorted by score, highest first; each decile's rate against the overall rate."""
    y = np.asarray(labels, dtype=np.float64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    base = y.mean()
    positives = y.sum()
    captured = 0.0
    table = []
    for number, part in enumerate(np.array_split(order, groups), start=1):
        if part.size == 0:
            continue
        rate = float(y[part].mean())
        captured += float(y[part].sum())
        table.append({
            "decile": number,
            "rows": int(part.size),
            "positive_rate": rate,
            "lift": float(rate / base) if base else 0.0,
            "cumulative_capture": captured / positives if positives else 0.0,
        })
    return table


def evaluate(labels: np.ndarray, probabilities: np.ndarray) -> tuple[dict[str, float], dict[str, list]]:
    """Scalar metrics (AUC, PR-AUC, log loss, Brier, ECE, base rate) and the reliability and lift tables."""
    reliability = reliability_table(labels, probabilities)
    lift = lift_table(labels, probabilities)
    metrics = {
        "auc": roc_auc(labels, probabilities),
        "pr_auc": average_precision(labels, probabilities),
        "logloss": log_loss(labels, probabilities),
        "brier": brier_score(labels, probabilities),
        "ece": expected_calibration_error(reliability),
        "base_rate": float(np.mean(labels, dtype=np.float64)),
        "top_decile_lift": float(lift[0]["lift"]),
    }
    return metrics, {"reliability": reliability, "lift_by_decile": lift}


# --------------------------------------------------------------------------------------------------- training


#: Gradient-boosted trees for tabular propensity data: shallow trees, slow learning rate, row/column subsampling.
TABULAR_PARAMS: dict[str, object] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "max_depth": 5,
    "min_child_weight": 3,
    "eta": 0.03,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "lambda": 1.0,
    "nthread": 2,
}
TABULAR_MAX_TREES = 1500
TABULAR_EARLY_STOPPING = 50


@dataclass(frozen=True)
class Split:
    """Row indices of the training, early-stopping (validation) and hold-out (test) sets."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    kind: str  # "stratified_random" or "time"


def stratified_three_way(labels: np.ndarray, seed: int, test_fraction: float = 0.2,
                         validation_fraction: float = 0.2) -> Split:
    """A stratified random hold-out, then a stratified validation slice of the rest for early stopping."""
    rest, test = stratified_split(labels, seed, test_fraction)
    train_local, valid_local = stratified_split(labels[rest], seed + 1, validation_fraction)
    return Split(rest[train_local], rest[valid_local], test, "stratified_random")


def time_split(times: np.ndarray, test_fraction: float = 0.2, validation_fraction: float = 0.2) -> Split:
    """Oldest rows train, the next slice stops early, the newest are the hold-out: no future row informs the past."""
    order = np.argsort(times, kind="mergesort")
    test_cut = int(round(order.size * (1 - test_fraction)))
    valid_cut = int(round(test_cut * (1 - validation_fraction)))
    return Split(np.sort(order[:valid_cut]), np.sort(order[valid_cut:test_cut]), np.sort(order[test_cut:]), "time")


def fit_trees(x: np.ndarray, y: np.ndarray, split: Split, feature_names: Sequence[str], *,
              params: Mapping[str, object] = TABULAR_PARAMS, seed: int = 7,
              max_trees: int = TABULAR_MAX_TREES, early_stopping: int = TABULAR_EARLY_STOPPING) -> xgb.Booster:
    """Boosted trees with early stopping on the validation rows; only the trees up to the best round are kept."""
    names = list(feature_names)
    dtrain = xgb.DMatrix(x[split.train], label=y[split.train], feature_names=names)
    dvalid = xgb.DMatrix(x[split.validation], label=y[split.validation], feature_names=names)
    trained = xgb.train({**params, "seed": seed}, dtrain, num_boost_round=max_trees,
                        evals=[(dvalid, "validation")], early_stopping_rounds=early_stopping, verbose_eval=False)
    return trained[: trained.best_iteration + 1]


def fit_logistic_baseline(x: np.ndarray, y: np.ndarray, split: Split, *, seed: int = 7) -> np.ndarray:
    """Logistic regression (XGBoost's gblinear, L2) on standardised columns; returns hold-out probabilities.

    Columns are standardised with the training rows' mean and deviation; a missing value becomes the mean (0).
    """
    train = x[split.train].astype(np.float64)
    mean = np.nanmean(train, axis=0)
    mean = np.where(np.isnan(mean), 0.0, mean)
    std = np.nanstd(train, axis=0)
    std = np.where((std > 0) & np.isfinite(std), std, 1.0)

    def standardise(rows: np.ndarray) -> np.ndarray:
        z = (rows.astype(np.float64) - mean) / std
        return np.nan_to_num(z, nan=0.0).astype(np.float32)

    params = {"booster": "gblinear", "objective": "binary:logistic", "eval_metric": "logloss", "lambda": 1e-3,
              "alpha": 0.0, "updater": "coord_descent", "feature_selector": "cyclic", "eta": 0.5, "nthread": 2,
              "seed": seed}
    dtrain = xgb.DMatrix(standardise(x[split.train]), label=y[split.train])
    dvalid = xgb.DMatrix(standardise(x[split.validation]), label=y[split.validation])
    model = xgb.train(params, dtrain, num_boost_round=300, evals=[(dvalid, "validation")],
                      early_stopping_rounds=20, verbose_eval=False)
    return model.predict(xgb.DMatrix(standardise(x[split.test])))


@dataclass(frozen=True)
class TrainingResult:
    """A trained binary model, its hold-out evaluation and the logistic-regression baseline's."""

    booster: xgb.Booster
    split: Split
    metrics: dict[str, float]
    tables: dict[str, list]
    baseline_metrics: dict[str, float]
    params: dict[str, object]

    @property
    def beats_baseline(self) -> bool:
        return self.metrics["auc"] > self.baseline_metrics["auc"]


def train_and_evaluate(x: np.ndarray, y: np.ndarray, feature_names: Sequence[str], split: Split, *,
                       seed: int = 7, params: Mapping[str, object] = TABULAR_PARAMS) -> TrainingResult:
    """Trees with early stopping, scored on the untouched hold-out next to a logistic-regression baseline."""
    for part, rows in (("train", split.train), ("validation", split.validation), ("test", split.test)):
        if rows.size == 0 or len(np.unique(y[rows])) < 2:
            raise ValueError(f"the {part} rows need both classes ({rows.size} rows)")
    booster = fit_trees(x, y, split, feature_names, params=params, seed=seed)
    probabilities = booster.inplace_predict(x[split.test])
    metrics, tables = evaluate(y[split.test], probabilities)
    baseline_metrics, baseline_tables = evaluate(y[split.test], fit_logistic_baseline(x, y, split, seed=seed))
    tables["baseline_reliability"] = baseline_tables["reliability"]
    return TrainingResult(
        booster=booster,
        split=split,
        metrics=metrics,
        tables=tables,
        baseline_metrics=baseline_metrics,
        params={**params, "seed": seed, "trees": booster.num_boosted_rounds(), "max_trees": TABULAR_MAX_TREES,
                "early_stopping_rounds": TABULAR_EARLY_STOPPING},
    )
