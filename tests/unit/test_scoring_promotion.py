"""Auto-promotion's rule: a score (AUC) must rise by the margin in points, an error (RMSE) must fall by the margin as
a fraction of the champion's."""

from __future__ import annotations

import numpy as np
import pytest

from services.scoring.offline import beats_champion, holdout_metric

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "expected"),
    [
        (0.760, 0.750, 0.005, True),
        (0.755, 0.750, 0.005, True),  # exactly the margin
        (0.754, 0.750, 0.005, False),
        (0.750, 0.750, 0.0, True),  # a tie with no margin
        (0.740, 0.750, 0.0, False),
    ],
)
def test_auc_must_rise_by_the_margin_in_points(candidate, champion, margin, expected):
    assert beats_champion(candidate, champion, margin, lower_is_better=False) is expected


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "expected"),
    [
        (95.0, 100.0, 0.05, True),  # 5% lower: exactly the margin
        (95.1, 100.0, 0.05, False),
        (90.0, 100.0, 0.05, True),
        (100.0, 100.0, 0.005, False),  # a tie is no reduction
        (100.0, 100.0, 0.0, True),
        (101.0, 100.0, 0.0, False),
        (9.5, 10.0, 0.05, True),  # relative: the same 5% whatever the currency's scale
    ],
)
def test_an_error_must_fall_by_the_margin_as_a_fraction_of_the_champions(candidate, champion, margin, expected):
    assert beats_champion(candidate, champion, margin, lower_is_better=True) is expected


def test_holdout_metric_is_auc_for_classifiers_and_the_named_error_for_regressions():
    y = np.array([0.0, 1.0, 0.0, 1.0])
    assert holdout_metric("auc", y, np.array([0.1, 0.9, 0.8, 0.7])) == pytest.approx(0.75)
    actual, predicted = np.array([0.0, 10.0, 0.0, 30.0]), np.array([1.0, 9.0, 2.0, 28.0])
    assert holdout_metric("rmse", actual, predicted) == pytest.approx(np.sqrt(10 / 4))
    assert holdout_metric("mae", actual, predicted) == pytest.approx(1.5)
