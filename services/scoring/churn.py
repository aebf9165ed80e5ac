"""Churn risk: the probability that a customer places no order in the next `horizon`, from purchase history.

The same RFM inputs as lifetime value (`LTV_FEATURES`, so nightly rescoring derives them from the profile the same
way) and the same time split: train on features at `end - 2 * horizon` labelled by the following horizon, evaluate
on features at `end - horizon` labelled by the last one. The baseline is recency alone (the longer since the last
order, the likelier the churn), the rule a retailer uses without a model. Pure numpy and XGBoost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

import numpy as np

from services.scoring.lifetime_value import (
    LTV_FEATURES,
    HistoryModelResult,
    Transaction,
    features_at,
    fit_early_stopped,
    time_split,
)
from services.scoring.training import evaluate, stratified_split

CHURN_PARAMS: dict[str, object] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "max_depth": 4,
    "min_child_weight": 5,
    "eta": 0.05,
    "subsample": 0.8,
    "nthread": 2,
}


def churn_snapshot(by_customer: Mapping[str, Sequence[Transaction]], cutoff: datetime, horizon: timedelta
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Customers with an order before `cutoff`: features (rows x LTV_FEATURES) and 1 when no order followed within
    `horizon`."""
    rows, labels = [], []
    for _, history in sorted(by_customer.items()):
        features = features_at(history, cutoff)
        if features is None:
            continue
        rows.append([features[name] for name in LTV_FEATURES])
        ordered = any(t.kind == "order" and cutoff < t.occurred_at <= cutoff + horizon for t in history)
        labels.append(0 if ordered else 1)
    return np.asarray(rows, dtype=np.float32).reshape(-1, len(LTV_FEATURES)), np.asarray(labels, dtype=np.int64)


def train_churn(transactions: Iterable[Transaction], *, horizon: timedelta = timedelta(days=90),
                end: datetime | None = None, seed: int = 7) -> HistoryModelResult:
    """Train on features at end - 2*horizon, evaluate on features at end - horizon (see the module docstring)."""
    by_customer, train_cutoff, eval_cutoff = time_split(transactions, horizon, end)
    x_train, y_train = churn_snapshot(by_customer, train_cutoff, horizon)
    x_eval, y_eval = churn_snapshot(by_customer, eval_cutoff, horizon)
    for name, labels in (("training", y_train), ("evaluation", y_eval)):
        if len(labels) < 50 or labels.min() == labels.max():
            raise ValueError(f"the {name} snapshot needs at least 50 customers with both churners and buyers "
                             f"({len(labels)} customers, {int(labels.sum())} churned): change the horizon")
    fit, stop = stratified_split(y_train, seed)
    booster = fit_early_stopped({**CHURN_PARAMS, "seed": seed}, x_train, y_train, fit, stop)
    probabilities = booster.inplace_predict(x_eval)
    recency = x_eval[:, LTV_FEATURES.index("recency_days")].astype(np.float64)
    # The baseline ranks by recency; squashed into (0, 1) so that the probability metrics are defined too.
    baseline = 1.0 - np.exp(-recency / max(1.0, horizon.days))
    metrics, _ = evaluate(y_eval, probabilities)
    baseline_metrics, _ = evaluate(y_eval, baseline)
    return HistoryModelResult(
        booster=booster,
        metrics=metrics,
        baseline_metrics=baseline_metrics,
        row_counts={"train": int(fit.size), "validation": int(stop.size), "test": int(y_eval.size)},
        train_cutoff=train_cutoff,
        eval_cutoff=eval_cutoff,
        params={**CHURN_PARAMS, "seed": seed, "trees": booster.num_boosted_rounds(), "horizon_days": horizon.days},
        deciding_metric="auc",
        lower_is_better=False,
        holdout_x=x_eval,
        holdout_y=y_eval,
    )
