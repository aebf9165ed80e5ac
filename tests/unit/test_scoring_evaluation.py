"""Evaluation metrics, splits, the CSV loader and the logistic baseline: hand-checked cases, no servers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.scoring.artifacts import FeatureKind
from services.scoring.tabular import DatasetError, load_csv
from services.scoring.training import (
    average_precision,
    brier_score,
    evaluate,
    expected_calibration_error,
    lift_table,
    reliability_table,
    stratified_three_way,
    time_split,
    train_and_evaluate,
)

pytestmark = pytest.mark.unit


def test_average_precision_matches_a_hand_computed_ranking():
    # Ranked by score: 1, 0, 1, 0, 1 -> precision at each positive: 1/1, 2/3, 3/5.
    labels = [1, 0, 1, 0, 1]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    assert average_precision(labels, scores) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert average_precision([0, 1], [0.1, 0.9]) == 1.0
    with pytest.raises(ValueError):
        average_precision([0, 0], [0.1, 0.2])


def test_brier_reliability_and_ece():
    assert brier_score([1, 0], [0.8, 0.4]) == pytest.approx((0.04 + 0.16) / 2)
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.2, 0.2, 0.7, 0.7, 0.9, 0.9])
    table = reliability_table(labels, p, bins=4)
    assert [row["rows"] for row in table] == [2, 2, 2, 2]
    assert [row["observed_rate"] for row in table] == [0.0, 0.5, 0.5, 1.0]
    assert [row["mean_predicted"] for row in table] == pytest.approx([0.1, 0.2, 0.7, 0.9])
    # |0.1-0| + |0.2-0.5| + |0.7-0.5| + |0.9-1|, each bin a quarter of the rows.
    assert expected_calibration_error(table) == pytest.approx((0.1 + 0.3 + 0.2 + 0.1) / 4)


def test_lift_by_decile_puts_the_highest_scores_first_and_captures_everything_by_the_last():
    labels = np.array([1] * 10 + [0] * 90)
    scores = np.linspace(1, 0, 100)  # the positives score highest
    table = lift_table(labels, scores)
    assert len(table) == 10 and table[0]["positive_rate"] == 1.0 and table[0]["lift"] == pytest.approx(10.0)
    assert table[0]["cumulative_capture"] == 1.0 and table[-1]["cumulative_capture"] == 1.0
    assert all(row["positive_rate"] == 0 for row in table[1:])
    metrics, tables = evaluate(labels, np.clip(scores, 0.01, 0.99))
    assert metrics["auc"] == 1.0 and metrics["top_decile_lift"] == pytest.approx(10.0)
    assert set(tables) == {"reliability", "lift_by_decile"}


def test_three_way_split_is_stratified_and_disjoint_and_the_time_split_keeps_the_newest_for_testing():
    labels = np.array([0] * 400 + [1] * 100)
    split = stratified_three_way(labels, seed=3)
    parts = [split.train, split.validation, split.test]
    assert sum(p.size for p in parts) == 500 and len(set(np.concatenate(parts))) == 500
    assert labels[split.test].mean() == pytest.approx(0.2) and split.test.size == 100
    times = np.array([5, 1, 4, 2, 3, 9, 8, 7, 6, 10], dtype=float)
    by_time = time_split(times)
    assert by_time.kind == "time"
    assert times[by_time.train].max() < times[by_time.validation].min() <= times[by_time.validation].max() < times[
        by_time.test].min()
    assert sorted(times[by_time.test]) == [9.0, 10.0]


def test_trees_beat_the_logistic_baseline_on_an_interaction_and_the_baseline_beats_chance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 3)).astype(np.float32)
    # Acceptance needs both signals at once (an interaction a linear model cannot draw) plus a linear part.
    logit = 2.5 * ((x[:, 0] > 0) ^ (x[:, 1] > 0)) + 0.8 * x[:, 2] - 1.5  # XOR: no line separates it
    y = (rng.random(3000) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    result = train_and_evaluate(x, y, ["a", "b", "c"], stratified_three_way(y, seed=1), seed=1)
    assert result.beats_baseline and result.metrics["auc"] > result.baseline_metrics["auc"] + 0.02
    assert result.baseline_metrics["auc"] > 0.6
    assert result.params["trees"] >= 1 and math.isfinite(result.metrics["logloss"])


def test_load_csv_infers_types_levels_missing_values_and_the_positive_label(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(
        "Age,Job,Balance [EUR],Duration,Output\n"
        "30,admin,100,5,yes\n"
        "40,retired,,7,no\n"
        "50,admin,-20,9,no\n"
        ",student,5,1,no\n"
    )
    data = load_csv(path, "Output", drop=["Duration"])
    assert [(f.name, f.kind) for f in data.features] == [
        ("Age", FeatureKind.NUMERIC), ("Job", FeatureKind.CATEGORICAL), ("Balance _EUR_", FeatureKind.NUMERIC)]
    assert data.features[1].levels == ("admin", "retired", "student")  # most frequent first
    assert data.renamed == {"Balance [EUR]": "Balance _EUR_"} and data.positive == "yes"
    assert data.columns == ("Age", "Job=admin", "Job=retired", "Job=student", "Balance _EUR_")
    nan = math.nan
    expected = [[30, 1, 0, 0, 100], [40, 0, 1, 0, nan], [50, 1, 0, 0, -20], [nan, 0, 0, 1, 5]]
    assert np.array_equal(data.x, np.array(expected, dtype=np.float32), equal_nan=True)
    assert data.y.tolist() == [1, 0, 0, 0]


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("a,b\n1,x\n", {"label": "y"}, "no column 'y'"),
        ("a,y\n1,maybe\n2,perhaps\n", {"label": "y"}, "pass --positive"),
        ("a,y\n1,yes\n2,no\n", {"label": "y", "positive": "si"}, "never occurs"),
        ("a,y\n1,yes\n2\n", {"label": "y"}, "line 3"),
        ("a,y\n", {"label": "y"}, "no data rows"),
        ("a,y\n1,\n", {"label": "y"}, "empty labels"),
    ],
)
def test_load_csv_refuses_unusable_files_saying_why(tmp_path, text, kwargs, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_csv(path, **kwargs)
