"""Lifetime value: features and labels on either side of the cut-off, the RFM baseline, the time-split training."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.scoring.lifetime_value import (
    LTV_FEATURES,
    RfmBaseline,
    Transaction,
    features_at,
    future_net_spend,
    regression_metrics,
    train_lifetime_value,
)

pytestmark = pytest.mark.unit
CUTOFF = datetime(2025, 1, 1, tzinfo=UTC)


def tx(days_before: float, amount: float, kind: str = "order", customer: str = "c") -> Transaction:
    return Transaction(customer, CUTOFF - timedelta(days=days_before), amount, kind)


def test_features_use_only_transactions_before_the_cut_off():
    history = [tx(400, 100), tx(30, 50), tx(20, 25, "return"), tx(-5, 999), tx(-10, 999, "return")]
    f = features_at(history, CUTOFF)
    assert f == {
        "recency_days": 30.0, "tenure_days": 400.0, "order_count": 2.0, "net_spend": 125.0, "avg_order_value": 75.0,
        "return_rate": 0.5, "returned_share": 25 / 150, "orders_90d": 1.0, "spend_90d": 50.0, "orders_365d": 1.0,
        "spend_365d": 50.0,
    }
    assert set(f) == set(LTV_FEATURES)
    assert features_at([tx(-1, 10)], CUTOFF) is None  # no order before the cut-off yet


def test_the_label_is_net_spend_strictly_after_the_cut_off_within_the_horizon():
    history = [tx(0, 70), tx(-1, 100), tx(-2, 30, "return"), tx(-365, 10), tx(-366, 500)]
    # The order at the cut-off itself belongs to the past; the one 366 days later is beyond the horizon.
    assert future_net_spend(history, CUTOFF, timedelta(days=365)) == pytest.approx(100 - 30 + 10)


def test_rfm_baseline_predicts_each_cells_training_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, len(LTV_FEATURES))).astype(np.float32)
    monetary = LTV_FEATURES.index("net_spend")
    y = np.where(x[:, monetary] > np.quantile(x[:, monetary], 0.8), 100.0, 0.0)
    predicted = RfmBaseline(x, y).predict(x)
    assert predicted[y == 100].mean() > 80 and predicted[y == 0].mean() < 20
    unseen = RfmBaseline(x[:5], y[:5])
    assert unseen.predict(x[5:6])[0] in set(unseen.means.values()) | {unseen.overall}


def test_regression_metrics():
    m = regression_metrics(np.array([0.0, 10.0, 0.0, 30.0]), np.array([1.0, 9.0, 2.0, 28.0]))
    assert m["mae"] == pytest.approx(1.5) and m["rmse"] == pytest.approx(np.sqrt((1 + 1 + 4 + 4) / 4))
    assert m["top_decile_spend_share"] == pytest.approx(30 / 40) and m["spearman"] > 0.7


def synthetic_history(customers: int = 1200, seed: int = 1) -> list[Transaction]:
    """Three years; each customer orders at a steady personal rate, with a personal basket size and return habit."""
    rng = np.random.default_rng(seed)
    start = CUTOFF - timedelta(days=3 * 365)
    out = []
    for c in range(customers):
        rate = rng.gamma(1.5, 2.0)  # orders per year
        basket = rng.lognormal(4.0, 0.5)
        returns = rng.beta(1, 4)
        born = rng.uniform(0, 1.5 * 365)
        t = born + rng.exponential(365 / rate)
        while t < 3 * 365:
            moment = start + timedelta(days=float(t))
            amount = float(basket * rng.uniform(0.7, 1.3))
            out.append(Transaction(f"c{c}", moment, amount, "order"))
            if rng.random() < returns:
                out.append(Transaction(f"c{c}", moment + timedelta(days=10), amount, "return"))
            t += rng.exponential(365 / rate)
    return out


def test_the_model_trains_on_the_earlier_cut_off_and_beats_the_rfm_cells_on_the_later_one():
    history = synthetic_history()
    result = train_lifetime_value(history, horizon=timedelta(days=365), end=CUTOFF)
    assert result.eval_cutoff == CUTOFF - timedelta(days=365)
    assert result.train_cutoff == CUTOFF - timedelta(days=730)
    assert result.row_counts["test"] > result.row_counts["train"]  # more customers exist by the later cut-off
    assert result.beats_baseline, (result.metrics, result.baseline_metrics)
    # It also ranks customers better (who will spend most), which is what call-centre priority needs.
    assert result.metrics["spearman"] > result.baseline_metrics["spearman"]
    assert result.metrics["top_decile_spend_share"] > result.baseline_metrics["top_decile_spend_share"]
    with pytest.raises(ValueError, match="too little history"):
        train_lifetime_value(history[:20], horizon=timedelta(days=365), end=CUTOFF)
