"""Doubly robust on the decision log: a cross-fitted reward model learned from stored decisions (synthetic logs
whose true policy value is known exactly), and the guarantees cross-fitting exists for."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from services.decision.domain.ope import NO_OFFER, GreedyPolicy, evaluate, logged_round
from services.decision.offline.reward_model import cross_fit, round_context

pytestmark = pytest.mark.unit

VALUES = {"a": 10.0, "b": 20.0, "c": 30.0}
EPSILON = 0.4


def acceptance(offer_id: str, x: float) -> float:
    """The true acceptance probability of each offer for a customer with feature x (the scoring model's too)."""
    return {"a": 0.5, "b": 0.2 + 0.3 * x, "c": 0.3 * (1 - x)}[offer_id]


def synthetic_log(n: int, seed: int):
    """n epsilon-greedy decisions stored as the decision service stores them (offers, trace, request), with
    revenue rewards; returns the rounds, their contexts and the candidate's exact expected value on them."""
    rng = np.random.default_rng(seed)
    candidate = GreedyPolicy(levers={"a": 3.0})
    rounds, contexts, truth = [], {}, 0.0
    for index in range(n):
        x = float(rng.uniform())
        considered = [
            {
                "offer_id": o,
                "propensity": acceptance(o, x),
                "value": v,
                "lever": 1.0,
                "context_weight": 1.0,
                "score": acceptance(o, x) * v,
            }
            for o, v in VALUES.items()
        ]
        ranked = sorted(considered, key=lambda e: (-e["score"], e["offer_id"]))
        first = {e["offer_id"]: EPSILON / 3 + (1 - EPSILON) * (e is ranked[0]) for e in considered}
        action = str(rng.choice(list(first), p=list(first.values())))
        reward = VALUES[action] * float(rng.uniform() < acceptance(action, x))
        trace = {
            "arm": "treatment",
            "considered": considered,
            "min_priority": 0.0,
            "exploration": {"policy": "epsilon_greedy", "epsilon": EPSILON, "first_probability": first},
        }
        request = {"customer_features": {"x": x}, "request_context": {"channel": "web"}}
        round_ = logged_round(f"d{index}", [{"offer_id": action, "rank": 1}], trace, reward)
        rounds.append(round_)
        contexts[round_.decision_id] = round_context(request, trace)
        truth += sum(p * VALUES[o] * acceptance(o, x) for o, p in candidate.probabilities(round_).items())
    return rounds, contexts, candidate, truth / n


def width(estimate) -> float:
    return estimate.high - estimate.low


def test_context_is_read_from_the_stored_request_and_trace():
    context = round_context(
        {"customer_features": {"recency_days": 3, "orders": 2.0}, "request_context": {"channel": "pos"}},
        {
            "considered": [
                {"offer_id": "a", "propensity": 0.2, "value": 5.0, "score": 1.0},
                {"offer_id": "x", "removed": "min_tier"},
            ]
        },
    )
    assert context.customer == {"recency_days": 3.0, "orders": 2.0, "channel_pos": 1.0}
    assert context.offers == {"a": {"propensity": 0.2, "value": 5.0, "score": 1.0}, "x": {}}


def test_doubly_robust_with_cross_fitted_trees_covers_the_truth_and_beats_ips_variance():
    rounds, contexts, candidate, truth = synthetic_log(3000, seed=1)
    model = cross_fit(rounds, contexts, binary=False, folds=5, seed=0)
    assert model.model == "xgboost" and model.folds == 5
    result = evaluate(rounds, candidate, reward_model=model, resamples=400, seed=0)
    assert result.dr.low <= truth <= result.dr.high
    assert result.ips.low <= truth <= result.ips.high
    # A good reward model leaves DR only the reward's own noise (large here: revenue is all or nothing): a smaller
    # variance than IPS, and nearly as small as with the true expected rewards as the model.
    assert width(result.dr) ** 2 < 0.8 * width(result.ips) ** 2

    def oracle(round_):
        x = contexts[round_.decision_id].customer["x"]
        return {o: v * acceptance(o, x) for o, v in VALUES.items()}

    best = evaluate(rounds, candidate, reward_model=oracle, resamples=400, seed=0)
    assert width(result.dr) < 1.1 * width(best.dr)
    # The model predicts every action the candidate may take, for every round.
    assert all(set(model(r)) >= {*r.pool, NO_OFFER} for r in rounds)


def test_few_rounds_fall_back_to_the_shrunk_per_offer_mean_and_dr_stays_unbiased():
    truths, covered = [], 0
    for seed in range(20):
        rounds, contexts, candidate, truth = synthetic_log(150, seed=100 + seed)
        model = cross_fit(rounds, contexts, binary=False, folds=5, seed=seed)
        assert model.model == "per_offer_mean"
        result = evaluate(rounds, candidate, reward_model=model, resamples=300, seed=seed)
        truths.append(result.dr.value - truth)
        covered += result.dr.low <= truth <= result.dr.high
    # Unbiased: the errors average out (their mean is within 3 standard errors of 0); the intervals mostly cover.
    errors = np.asarray(truths)
    assert abs(errors.mean()) <= 3 * errors.std(ddof=1) / math.sqrt(len(errors))
    assert covered >= 16


@pytest.mark.parametrize("model", ["per_offer_mean", "xgboost"])
def test_a_rounds_own_reward_never_reaches_its_prediction(model):
    rounds, contexts, _, _ = synthetic_log(600, seed=7)
    before = cross_fit(rounds, contexts, binary=False, folds=3, seed=0, model=model)
    changed = list(rounds)
    changed[5] = replace(rounds[5], reward=rounds[5].reward + 1000.0)  # an outlier in round 5 only
    after = cross_fit(changed, contexts, binary=False, folds=3, seed=0, model=model)
    assert after(rounds[5]) == before(rounds[5])  # the model predicting round 5 never saw it
    moved = sum(after(r) != before(r) for r in rounds)
    assert moved >= 300  # the other folds' models did learn from it (2 of 3 folds' rounds)


def test_binary_rewards_are_predicted_as_probabilities():
    rounds, contexts, _, _ = synthetic_log(1500, seed=3)
    accepted = [replace(r, reward=float(r.reward > 0)) for r in rounds]
    model = cross_fit(accepted, contexts, binary=True, folds=3, seed=0)
    predictions = [q for r in accepted for q in model(r).values()]
    assert model.model == "xgboost" and all(0.0 <= q <= 1.0 for q in predictions)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="folds"):
        cross_fit([], {}, binary=True, folds=1)
    with pytest.raises(ValueError, match="reward model"):
        cross_fit([], {}, binary=True, model="forest")
