"""A cross-fitted reward model for doubly robust evaluation of the decision log (`nextbest ope`).

Doubly robust (services/decision/domain/ope.py) needs q(x, a): the expected reward of every first-slot action a in
each logged round's context x. This module learns it from the log itself:

- the context is what the decision stored: the customer's feature snapshot (`request.customer_features`, as scored
  then, so no later event leaks in) and the channel; an action is described by its logged factors in the trace
  (the scoring model's propensity, value, lever, context weight, score) and its offer id, or "no offer";
- cross-fitting: the rounds are split into k folds (seeded) and each fold's predictions come from a model fitted on
  the other folds only, so no round's own reward is in the model that predicts it. Without that, a flexible model
  would partly memorise the rewards, the residual r - q(x, logged) would shrink towards 0 and DR would lean on the
  direct method's bias;
- the model is XGBoost (one thread, as in offline/hillstrom.py: a second OpenMP thread on a busy two-core machine
  spins instead of working) when every training fold has at least MIN_TREE_ROUNDS rounds; below that, a per-offer
  mean shrunk towards the overall mean by SHRINKAGE pseudo-rounds. A few hundred rounds leave the trees nothing to
  learn beyond each offer's average but noise (and no room for an early-stopping split), while the shrunk mean
  cannot overfit a rare offer's two rounds. Either way DR stays unbiased: a worse q only costs variance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.decision.domain.ope import NO_OFFER, Round

#: An action's logged factors, read from its trace entry (missing ones are NaN: XGBoost treats them as missing).
ACTION_FACTORS = ("propensity", "value", "lever", "context_weight", "score")
#: Below this many rounds per training fold the per-offer mean is used (see the module docstring).
MIN_TREE_ROUNDS = 400
#: Pseudo-rounds at the overall mean added to each offer's mean: an offer seen twice stays near the average.
SHRINKAGE = 10.0
#: One thread (see the module docstring); shallow trees, early-stopped on a fifth of each training fold.
TREE_PARAMS = {"max_depth": 4, "eta": 0.05, "min_child_weight": 5, "subsample": 0.8, "nthread": 1}
MAX_TREES, EARLY_STOPPING = 400, 30
#: Offers identified by their own column; rarer ones share the "other offer" column (their factors still count).
MAX_OFFER_COLUMNS = 100


@dataclass(frozen=True)
class RoundContext:
    """What a logged decision knew when it chose: the customer's features and each pool offer's factors."""

    customer: Mapping[str, float]
    offers: Mapping[str, Mapping[str, float]]


def round_context(request: Mapping[str, Any], trace: Mapping[str, Any]) -> RoundContext:
    """The context of a stored decision (`request` and `trace` as `decision_decisions` holds them)."""
    customer = {name: float(value) for name, value in (request.get("customer_features") or {}).items()}
    channel = (request.get("request_context") or {}).get("channel")
    if channel:
        customer[f"channel_{channel}"] = 1.0
    offers = {
        entry["offer_id"]: {name: float(entry[name]) for name in ACTION_FACTORS if name in entry}
        for entry in trace.get("considered", ())
        if "offer_id" in entry
    }
    return RoundContext(customer, offers)


@dataclass(frozen=True)
class CrossFitted:
    """q(x, a) for every round and every action it could take, each predicted by a model that never saw the round."""

    predictions: Mapping[str, Mapping[str, float]]  # decision id -> action -> expected reward
    model: str  # "xgboost" or "per_offer_mean"
    folds: int

    def __call__(self, round_: Round) -> Mapping[str, float]:
        return self.predictions.get(round_.decision_id, {})


def _actions(round_: Round) -> tuple[str, ...]:
    """Every first-slot action of the round: its pool, what was logged, and no offer."""
    return tuple(dict.fromkeys((*round_.pool, round_.action, NO_OFFER)))


def cross_fit(
    rounds: Sequence[Round],
    contexts: Mapping[str, RoundContext],
    *,
    binary: bool,
    folds: int = 5,
    seed: int = 0,
    model: str = "auto",
) -> CrossFitted:
    """Cross-fitted q over `rounds` (contexts by decision id). `binary`: the reward is 0/1 (acceptance) rather than
    revenue. `model`: "auto" (XGBoost when the folds are big enough), "xgboost" or "per_offer_mean"."""
    if folds < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    if model not in ("auto", "xgboost", "per_offer_mean"):
        raise ValueError(f"unknown reward model {model!r}")
    n = len(rounds)
    folds = min(folds, n) if n >= 2 else 2
    if model == "auto":
        model = "xgboost" if n - math.ceil(n / folds) >= MIN_TREE_ROUNDS else "per_offer_mean"
    if n < 2:
        return CrossFitted({}, model, folds)
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    fit = _fit_trees if model == "xgboost" else _fit_means
    predictions: dict[str, dict[str, float]] = {}
    for fold in range(folds):
        train = [rounds[i] for i in np.flatnonzero(fold_of != fold)]
        test = [rounds[i] for i in np.flatnonzero(fold_of == fold)]
        predict = fit(train, contexts, binary=binary, seed=seed + fold)
        predictions.update(predict(test))
    return CrossFitted(predictions, model, folds)


def _fit_means(train: Sequence[Round], contexts: Mapping[str, RoundContext], *, binary: bool, seed: int):
    overall = float(np.mean([r.reward for r in train])) if train else 0.0
    totals: dict[str, list[float]] = {}
    for round_ in train:
        total = totals.setdefault(round_.action, [0.0, 0.0])
        total[0] += round_.reward
        total[1] += 1
    means = {a: (s + SHRINKAGE * overall) / (count + SHRINKAGE) for a, (s, count) in totals.items()}

    def predict(test: Sequence[Round]) -> dict[str, dict[str, float]]:
        return {r.decision_id: {a: means.get(a, overall) for a in _actions(r)} for r in test}

    return predict


def _fit_trees(train: Sequence[Round], contexts: Mapping[str, RoundContext], *, binary: bool, seed: int):
    import xgboost as xgb  # offline only

    customer_names = sorted({name for r in train for name in contexts[r.decision_id].customer})
    seen: dict[str, int] = {}
    for round_ in train:
        seen[round_.action] = seen.get(round_.action, 0) + 1
    offer_columns = [a for a, _ in sorted(seen.items(), key=lambda item: (-item[1], item[0])) if a != NO_OFFER]
    offer_columns = offer_columns[:MAX_OFFER_COLUMNS]
    names = [
        *(f"customer:{name}" for name in customer_names),
        *(f"action:{name}" for name in ACTION_FACTORS),
        "action:no_offer",
        "action:other_offer",
        *(f"offer:{offer_id}" for offer_id in offer_columns),
    ]
    offer_index = {offer_id: index for index, offer_id in enumerate(offer_columns)}

    def row(round_: Round, action: str) -> list[float]:
        context = contexts[round_.decision_id]
        factors = context.offers.get(action, {})
        onehot = [0.0] * len(offer_columns)
        if action in offer_index:
            onehot[offer_index[action]] = 1.0
        return [
            *(context.customer.get(name, math.nan) for name in customer_names),
            *(factors.get(name, math.nan) for name in ACTION_FACTORS),
            float(action == NO_OFFER),
            float(action != NO_OFFER and action not in offer_index),
            *onehot,
        ]

    order = np.random.default_rng(seed).permutation(len(train))
    cut = len(train) * 4 // 5

    def matrix(part: np.ndarray) -> xgb.DMatrix:
        chosen = [train[i] for i in part]
        return xgb.DMatrix(
            np.array([row(r, r.action) for r in chosen]), label=[r.reward for r in chosen], feature_names=names
        )

    # Revenue is mostly zero with a long tail: Tweedie fits it where squared error stalls (as for Hillstrom).
    params = {**TREE_PARAMS, "seed": seed, "objective": "binary:logistic" if binary else "reg:tweedie"}
    booster = xgb.train(
        params,
        matrix(order[:cut]),
        num_boost_round=MAX_TREES,
        evals=[(matrix(order[cut:]), "validation")],
        early_stopping_rounds=EARLY_STOPPING,
        verbose_eval=False,
    )
    booster = booster[: booster.best_iteration + 1]

    def predict(test: Sequence[Round]) -> dict[str, dict[str, float]]:
        pairs = [(r, a) for r in test for a in _actions(r)]
        if not pairs:
            return {}
        values = booster.predict(xgb.DMatrix(np.array([row(r, a) for r, a in pairs]), feature_names=names))
        predictions: dict[str, dict[str, float]] = {}
        for (round_, action), value in zip(pairs, values.tolist(), strict=True):
            predictions.setdefault(round_.decision_id, {})[action] = value
        return predictions

    return predict
