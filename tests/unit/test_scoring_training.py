"""Offline training: the numpy metrics, the seeded split, and train_binary_model end to end on synthetic data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from services.scoring.artifacts import METADATA_FILE, MODEL_FILE, ModelStatus, list_artifacts, load_booster
from services.scoring.training import log_loss, roc_auc, stratified_split, train_binary_model

pytestmark = pytest.mark.unit

FEATURES = ["loyalty", "offer_value", "noise"]


def synthetic_dataset(rows: int = 400, seed: int = 3) -> tuple[list[dict[str, float]], list[int]]:
    """Acceptance driven by the offer's value (strongly) and the customer's loyalty; `noise` carries nothing.

    Shared with the scoring integration tests, which check that served scores rank as this truth implies.
    """
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for _ in range(rows):
        row = {"loyalty": float(rng.normal()), "offer_value": float(rng.normal()), "noise": float(rng.normal())}
        labels.append(int(row["offer_value"] + 0.5 * row["loyalty"] + 0.3 * rng.normal() > 0))
        features.append(row)
    return features, labels


def test_auc_matches_a_hand_computed_case_with_ties():
    # Positives score 0.8, 0.4, 0.35; negatives 0.4, 0.1. Pairs (pos > neg): 0.8 beats both (2), 0.4 ties 0.4
    # (0.5) and beats 0.1 (1), 0.35 beats 0.1 (1): 4.5 of 6 pairs.
    assert roc_auc([1, 0, 1, 1, 0], [0.8, 0.4, 0.4, 0.35, 0.1]) == pytest.approx(4.5 / 6)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc([1, 1], [0.2, 0.3])


def test_log_loss_is_the_mean_cross_entropy_and_survives_certain_predictions():
    expected = -(math.log(0.9) + math.log(0.8)) / 2
    assert log_loss([1, 0], [0.9, 0.2]) == pytest.approx(expected)
    assert math.isfinite(log_loss([1, 0], [0.0, 1.0]))  # clipped, not inf


def test_stratified_split_is_seeded_disjoint_and_keeps_both_classes_on_both_sides():
    labels = np.array([0] * 90 + [1] * 10)
    train, valid = stratified_split(labels, seed=5)
    again_train, again_valid = stratified_split(labels, seed=5)
    assert np.array_equal(train, again_train) and np.array_equal(valid, again_valid)
    assert set(train).isdisjoint(valid) and len(train) + len(valid) == 100
    assert labels[valid].sum() == 2 and (labels[valid] == 0).sum() == 18  # 20% of each class
    assert labels[train].sum() == 8


def test_train_binary_model_learns_the_signal_and_writes_the_artifact(tmp_path):
    rows, labels = synthetic_dataset()
    meta = train_binary_model(rows, labels, feature_names=FEATURES, models_dir=tmp_path, version="v1", status="challenger")

    assert meta.metrics["auc"] > 0.8
    assert 0 < meta.metrics["logloss"] < math.log(2)  # better than a coin
    assert meta.metrics["base_rate"] == pytest.approx(np.mean(labels), abs=0.05)
    assert meta.training_rows == 320 and meta.metrics["validation_rows"] == 80
    assert meta.status is ModelStatus.CHALLENGER and meta.feature_names == tuple(FEATURES)
    folder = tmp_path / "offer_propensity" / "v1"
    assert (folder / MODEL_FILE).is_file()
    written = json.loads((folder / METADATA_FILE).read_text())
    assert written["version"] == "v1" and written["status"] == "challenger"
    assert written["trained_at"].endswith("Z") and written["params"]["objective"] == "binary:logistic"
    assert 1 <= written["params"]["trees"] <= 200
    [artifact] = list_artifacts(tmp_path)
    assert artifact.metadata == meta

    # The saved model ranks the truth: a high-value offer beats a low-value one for the same customer.
    booster = load_booster(folder, FEATURES)
    low, high = booster.inplace_predict(np.array([[0, -2, 0], [0, 2, 0]], dtype=np.float32))
    assert 0 < low < 0.5 < high < 1


def test_default_version_is_a_utc_timestamp_with_a_suffix_and_missing_features_are_allowed(tmp_path):
    rows, labels = synthetic_dataset(200)
    for row in rows[::3]:
        del row["loyalty"]  # missing -> NaN, which XGBoost routes by a learned default
    meta = train_binary_model(rows, labels, feature_names=FEATURES, models_dir=tmp_path, parent_version="v0")
    assert len(meta.version) == len("20250101-120000-abcdef") and meta.version[8] == "-"
    assert meta.parent_version == "v0" and meta.status is ModelStatus.CHAMPION
    assert (tmp_path / "offer_propensity" / meta.version / MODEL_FILE).is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows, labels: (rows, labels[:-1]), "labels"),
        (lambda rows, labels: (rows[:5], labels[:5]), "at least 10 rows"),
        (lambda rows, labels: (rows, [1] * len(rows)), "each class"),
        (lambda rows, labels: (rows, [2] + labels[1:]), "0 or 1"),
        (lambda rows, labels: ([{**rows[0], "offer_value": math.inf}, *rows[1:]], labels), r"rows\[0\]\[offer_value\]"),
    ],
)
def test_unusable_training_input_is_refused_and_nothing_is_written(tmp_path, change, message):
    rows, labels = change(*synthetic_dataset(60))
    with pytest.raises(ValueError, match=message):
        train_binary_model(rows, labels, feature_names=FEATURES, models_dir=tmp_path)
    assert list_artifacts(tmp_path) == []


def test_an_existing_version_is_never_overwritten(tmp_path):
    rows, labels = synthetic_dataset(100)
    train_binary_model(rows, labels, feature_names=FEATURES, models_dir=tmp_path, version="v1")
    with pytest.raises(FileExistsError):
        train_binary_model(rows, labels, feature_names=FEATURES, models_dir=tmp_path, version="v1")
