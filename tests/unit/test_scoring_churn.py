"""Churn risk training: labels from the horizon after the cut-off only, and a model that beats recency alone."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.scoring.churn import churn_snapshot, train_churn
from services.scoring.lifetime_value import LTV_FEATURES, Transaction
from tests.unit.test_scoring_lifetime_value import CUTOFF, synthetic_history


def tx(customer: str, days_before: float, kind: str = "order") -> Transaction:
    return Transaction(customer, CUTOFF - timedelta(days=days_before), 50.0, kind)


def test_a_customer_churned_when_no_order_followed_within_the_horizon():
    history = {
        "stays": [tx("stays", 40), tx("stays", -30)],  # ordered 30 days after the cut-off
        "churns": [tx("churns", 40), tx("churns", -30, "return"), tx("churns", -120)],  # a return is no order
        "new": [tx("new", -10)],  # no order before the cut-off: not in the snapshot
    }
    x, y = churn_snapshot(history, CUTOFF, timedelta(days=90))
    assert x.shape == (2, len(LTV_FEATURES)) and y.tolist() == [1, 0]  # sorted by id: churns, stays


def test_the_model_beats_the_recency_baseline_on_the_later_cut_off():
    result = train_churn(synthetic_history(), horizon=timedelta(days=90), end=CUTOFF)
    assert result.eval_cutoff == CUTOFF - timedelta(days=90) and result.train_cutoff == CUTOFF - timedelta(days=180)
    assert result.beats_baseline and result.metrics["auc"] > 0.65
    assert 0 < result.metrics["base_rate"] < 1


def test_too_little_history_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="at least 50 customers"):
        train_churn([tx("a", 10), tx("a", 200)], horizon=timedelta(days=90), end=CUTOFF)
