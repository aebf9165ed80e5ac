"""Lifetime value: future net spend from purchase history, against an RFM baseline, on a time split.

From a customer transaction history (orders and returns) this builds, as of a cut-off, RFM-style features
(recency, frequency, monetary value, returns, recent activity) and the label "net spend in the next `horizon`".
Only transactions before the cut-off make features; only those in (cut-off, cut-off + horizon] make the label.

The time split: the model trains on features at `end - 2 * horizon` with labels from the following horizon, and is
evaluated on features at `end - horizon` with labels from the last horizon — data it never saw, later in time.
The baseline is the classic RFM cell model: recency, frequency and monetary quintiles (cut at the training
cut-off) and each cell's mean future spend in training. Pure numpy and XGBoost; no SQL, no gRPC.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import xgboost as xgb

from services.scoring.training import stratified_split

LTV_FEATURES: tuple[str, ...] = (
    "recency_days",
    "tenure_days",
    "order_count",
    "net_spend",
    "avg_order_value",
    "return_rate",
    "returned_share",
    "orders_90d",
    "spend_90d",
    "orders_365d",
    "spend_365d",
)
LTV_PARAMS: dict[str, object] = {
    "objective": "reg:tweedie",  # many zero futures and a long right tail: Tweedie fits spend better than squares
    "tweedie_variance_power": 1.4,
    "eval_metric": "rmse",
    "tree_method": "hist",
    "max_depth": 4,
    "min_child_weight": 5,
    "eta": 0.05,
    "subsample": 0.8,
    "nthread": 2,
}


@dataclass(frozen=True, slots=True)
class Transaction:
    customer_id: str
    occurred_at: datetime
    amount: float  # positive
    kind: str  # "order" or "return"


def read_transactions(path: Path) -> list[Transaction]:
    """A CSV with customer_id, occurred_at (ISO-8601), amount, type (order|return); raises ValueError naming the line."""
    out = []
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        missing = {"customer_id", "occurred_at", "amount", "type"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for number, row in enumerate(reader, start=2):
            try:
                moment = datetime.fromisoformat(row["occurred_at"])
                amount = float(row["amount"])
            except ValueError as exc:
                raise ValueError(f"{path}: line {number}: {exc}") from None
            kind = row["type"].strip().lower()
            if kind not in ("order", "return") or not math.isfinite(amount) or amount < 0:
                raise ValueError(f"{path}: line {number}: type must be order|return and amount a number >= 0")
            moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
            out.append(Transaction(row["customer_id"], moment, amount, kind))
    if not out:
        raise ValueError(f"{path}: no transactions")
    return out


def features_at(history: Sequence[Transaction], cutoff: datetime) -> dict[str, float] | None:
    """The RFM features of one customer from transactions strictly before `cutoff`; None if no order yet."""
    past = [t for t in history if t.occurred_at < cutoff]
    orders = [t for t in past if t.kind == "order"]
    if not orders:
        return None
    returns = [t for t in past if t.kind == "return"]
    spend = sum(t.amount for t in orders)
    returned = sum(t.amount for t in returns)
    days = lambda t: (cutoff - t.occurred_at).total_seconds() / 86400  # noqa: E731
    recent90 = [t for t in orders if days(t) <= 90]
    recent365 = [t for t in orders if days(t) <= 365]
    return {
        "recency_days": min(days(t) for t in orders),
        "tenure_days": max(days(t) for t in orders),
        "order_count": float(len(orders)),
        "net_spend": spend - returned,
        "avg_order_value": spend / len(orders),
        "return_rate": len(returns) / len(orders),
        "returned_share": returned / spend if spend else 0.0,
        "orders_90d": float(len(recent90)),
        "spend_90d": sum(t.amount for t in recent90),
        "orders_365d": float(len(recent365)),
        "spend_365d": sum(t.amount for t in recent365),
    }


def future_net_spend(history: Sequence[Transaction], cutoff: datetime, horizon: timedelta) -> float:
    """Orders minus returns in (cutoff, cutoff + horizon]."""
    return sum(
        (t.amount if t.kind == "order" else -t.amount)
        for t in history
        if cutoff < t.occurred_at <= cutoff + horizon
    )


def snapshot(by_customer: Mapping[str, Sequence[Transaction]], cutoff: datetime, horizon: timedelta
             ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Customers with an order before `cutoff`: ids, features (rows x LTV_FEATURES) and future net spend."""
    ids, rows, labels = [], [], []
    for customer_id, history in sorted(by_customer.items()):
        features = features_at(history, cutoff)
        if features is None:
            continue
        ids.append(customer_id)
        rows.append([features[name] for name in LTV_FEATURES])
        labels.append(future_net_spend(history, cutoff, horizon))
    return ids, np.asarray(rows, dtype=np.float32).reshape(-1, len(LTV_FEATURES)), np.asarray(labels)


def _quintile_edges(values: np.ndarray) -> np.ndarray:
    return np.quantile(values, [0.2, 0.4, 0.6, 0.8])


class RfmBaseline:
    """Mean future spend per (recency, frequency, monetary) quintile cell of the training snapshot."""

    COLUMNS = (LTV_FEATURES.index("recency_days"), LTV_FEATURES.index("order_count"), LTV_FEATURES.index("net_spend"))

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.edges = [_quintile_edges(x[:, c]) for c in self.COLUMNS]
        self.overall = float(y.mean())
        sums: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for cell, value in zip(self._cells(x), y, strict=True):
            sums[cell][0] += value
            sums[cell][1] += 1
        self.means = {cell: total / count for cell, (total, count) in sums.items()}

    def _cells(self, x: np.ndarray) -> list[tuple[int, ...]]:
        codes = [np.searchsorted(edges, x[:, c], side="right") for edges, c in zip(self.edges, self.COLUMNS, strict=True)]
        return list(zip(*(code.tolist() for code in codes), strict=True))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.array([self.means.get(cell, self.overall) for cell in self._cells(x)])


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, the Spearman rank correlation and the share of future spend held by the top-decile predictions."""
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    error = predicted - actual

    def ranks(values: np.ndarray) -> np.ndarray:  # tied values share their average rank
        order = np.argsort(values, kind="mergesort")
        _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
        out = np.empty(values.size)
        out[order] = np.repeat(first + (counts - 1) / 2.0, counts)
        return out

    ra, rp = ranks(actual), ranks(predicted)
    spearman = float(np.corrcoef(ra, rp)[0, 1]) if actual.size > 1 and ra.std() and rp.std() else 0.0
    top = np.argsort(-predicted, kind="mergesort")[: max(1, actual.size // 10)]
    total = actual.clip(min=0).sum()
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "spearman": spearman,
        "top_decile_spend_share": float(actual[top].clip(min=0).sum() / total) if total else 0.0,
        "mean_actual": float(actual.mean()),
        "mean_predicted": float(predicted.mean()),
    }


@dataclass(frozen=True)
class HistoryModelResult:
    """A model trained on purchase histories with a time split, and its hold-out metrics next to its baseline's."""

    booster: xgb.Booster
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    row_counts: dict[str, int]
    train_cutoff: datetime
    eval_cutoff: datetime
    params: dict[str, object]
    #: The hold-out metric that decides whether the model beats its baseline, and which way is better.
    deciding_metric: str
    lower_is_better: bool
    #: The hold-out (evaluation snapshot): features (rows x LTV_FEATURES) and labels, so that auto-promotion can
    #: score the champion on the very same rows.
    holdout_x: np.ndarray
    holdout_y: np.ndarray

    @property
    def beats_baseline(self) -> bool:
        model, baseline = self.metrics[self.deciding_metric], self.baseline_metrics[self.deciding_metric]
        return model < baseline if self.lower_is_better else model > baseline


def time_split(transactions: Iterable[Transaction], horizon: timedelta, end: datetime | None
               ) -> tuple[dict[str, list[Transaction]], datetime, datetime]:
    """Histories by customer and the two cut-offs: train on features at end - 2*horizon, evaluate at end - horizon
    (`end` defaults to the last transaction)."""
    by_customer: dict[str, list[Transaction]] = defaultdict(list)
    for t in transactions:
        by_customer[t.customer_id].append(t)
    if not by_customer:
        raise ValueError("no transactions")
    end = end or max(t.occurred_at for history in by_customer.values() for t in history)
    return by_customer, end - 2 * horizon, end - horizon


def fit_early_stopped(params: dict, x: np.ndarray, y: np.ndarray, fit: np.ndarray, stop: np.ndarray) -> xgb.Booster:
    """Boost on the `fit` rows with early stopping on the `stop` rows (customers of the same cut-off, so no time
    leak), cut at the best iteration: the training step the history models (LTV, churn) share."""
    dfit = xgb.DMatrix(x[fit], label=y[fit], feature_names=list(LTV_FEATURES))
    dstop = xgb.DMatrix(x[stop], label=y[stop], feature_names=list(LTV_FEATURES))
    trained = xgb.train(params, dfit, num_boost_round=1000, evals=[(dstop, "validation")],
                        early_stopping_rounds=30, verbose_eval=False)
    return trained[: trained.best_iteration + 1]


def train_lifetime_value(transactions: Iterable[Transaction], *, horizon: timedelta = timedelta(days=365),
                         end: datetime | None = None, seed: int = 7) -> HistoryModelResult:
    """Train on features at end - 2*horizon, evaluate on features at end - horizon (see the module docstring)."""
    by_customer, train_cutoff, eval_cutoff = time_split(transactions, horizon, end)
    _, x_train, y_train = snapshot(by_customer, train_cutoff, horizon)
    _, x_eval, y_eval = snapshot(by_customer, eval_cutoff, horizon)
    if len(y_train) < 50 or len(y_eval) < 20:
        raise ValueError(f"too little history before {train_cutoff:%Y-%m-%d} / {eval_cutoff:%Y-%m-%d} for a "
                         f"{horizon.days}-day horizon ({len(y_train)} / {len(y_eval)} customers): shorten the horizon")
    # Early stopping on a random fifth of the training customers (same cut-off, so no time leak).
    fit, stop = stratified_split((y_train > 0).astype(int), seed)
    booster = fit_early_stopped({**LTV_PARAMS, "seed": seed}, x_train, y_train.clip(min=0), fit, stop)
    predictions = booster.inplace_predict(x_eval)
    baseline = RfmBaseline(x_train, y_train).predict(x_eval)
    return HistoryModelResult(
        booster=booster,
        metrics=regression_metrics(y_eval, predictions),
        baseline_metrics=regression_metrics(y_eval, baseline),
        row_counts={"train": int(fit.size), "validation": int(stop.size), "test": int(y_eval.size)},
        train_cutoff=train_cutoff,
        eval_cutoff=eval_cutoff,
        params={**LTV_PARAMS, "seed": seed, "trees": booster.num_boosted_rounds(), "horizon_days": horizon.days},
        deciding_metric="rmse",
        lower_is_better=True,
        holdout_x=x_eval,
        holdout_y=y_eval,
    )
