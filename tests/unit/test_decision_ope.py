"""Off-policy evaluation of the first slot: logged rounds from stored traces, IPS / SNIPS / doubly robust worked by
hand, and all three on synthetic logs whose true policy value is known exactly."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from services.decision.domain.ope import (
    NO_OFFER,
    FixedPolicy,
    GreedyPolicy,
    LookupPolicy,
    Round,
    UniformPolicy,
    evaluate,
    logged_round,
)

pytestmark = pytest.mark.unit


def scored(offer_id: str, score: float, rank: int | None = None) -> dict:
    entry = {"offer_id": offer_id, "score": score}
    return {**entry, "rank": rank} if rank else entry


def test_rounds_from_greedy_exploring_control_and_empty_traces():
    greedy = logged_round("d1", [{"offer_id": "a", "rank": 1}],
                          {"arm": "treatment", "considered": [scored("a", 2.0, 1), scored("b", 1.0)]}, 5.0)
    assert (greedy.action, dict(greedy.logging), greedy.pool, greedy.propensity) == ("a", {"a": 1.0}, ("a", "b"), 1.0)
    exploring = logged_round(
        "d2", [{"offer_id": "b", "rank": 1}],
        {"arm": "treatment", "considered": [scored("a", 2.0), scored("b", 1.0, 1)],
         "exploration": {"epsilon": 0.5, "explored": True, "first_probability": {"a": 0.75, "b": 0.25}}}, 0.0)
    assert exploring.propensity == 0.25 and exploring.scores == {"a": 2.0, "b": 1.0}
    control = logged_round(
        "d3", [{"offer_id": "b", "rank": 1}],
        {"arm": "control", "control_pick": "b", "control_probability": 1 / 3,
         "considered": [{"offer_id": "a", "removed": "control_not_drawn"},
                        {"offer_id": "c", "removed": "control_not_drawn"},
                        {"offer_id": "x", "removed": "min_tier"}, scored("b", 0.5, 1)]}, 0.0)
    assert control.pool == ("a", "b", "c") and control.propensity == pytest.approx(1 / 3) and control.scores is None
    empty = logged_round("d4", [], {"arm": "treatment", "considered": []}, 0.0)
    assert (empty.action, empty.propensity) == (NO_OFFER, 1.0)


def exploring_round(decision_id: str, action: str, reward: float) -> Round:
    # epsilon 0.5 over a pool of two with "a" greedy: mu(a) = 0.5 + 0.25, mu(b) = 0.25.
    return Round(decision_id, action, {"a": 0.75, "b": 0.25}, ("a", "b"), {"a": 2.0, "b": 1.0}, 0.0, reward)


def test_ips_and_snips_by_hand():
    rounds = [exploring_round("d1", "a", 4.0), exploring_round("d2", "b", 8.0)]
    result = evaluate(rounds, GreedyPolicy(levers={"b": 10.0}), resamples=200)
    # The candidate always puts "b" first: weights 0/0.75 and 1/0.25 = 4.
    assert result.ips.value == pytest.approx((0 * 4 + 4 * 8) / 2)
    assert result.snips.value == pytest.approx(4 * 8 / 4)
    assert (result.effective_sample_size, result.max_weight, result.unsupported) == (1.0, 4.0, 0.0)
    assert result.logged_value == pytest.approx(6.0)
    assert result.ips.low <= result.ips.value <= result.ips.high


def test_evaluating_the_logging_policy_reproduces_the_logged_value():
    rounds = [exploring_round(f"d{i}", "a" if i % 4 else "b", float(i)) for i in range(40)]
    result = evaluate(rounds, GreedyPolicy(epsilon=0.5), resamples=500, seed=1)
    mean = sum(range(40)) / 40
    assert result.ips.value == pytest.approx(mean) and result.snips.value == pytest.approx(mean)
    assert result.effective_sample_size == pytest.approx(40)
    assert result.ips.low < mean < result.ips.high
    assert evaluate(rounds, GreedyPolicy(epsilon=0.5), resamples=500, seed=1) == result  # seeded: reproducible


def test_a_greedy_log_cannot_see_other_choices_and_says_so():
    rounds = [Round("d1", "a", {"a": 1.0}, ("a", "b"), {"a": 2.0, "b": 1.0}, 0.0, 3.0)]
    result = evaluate(rounds, GreedyPolicy(levers={"b": 5.0}), resamples=50)
    assert result.ips.value == 0.0 and result.unsupported == 1.0
    assert math.isnan(result.snips.value)  # no weight at all: nothing to normalise by


def test_uniform_policy_on_control_draws_and_skips_for_rescoring():
    control = Round("d1", "b", {"a": 0.5, "b": 0.5}, ("a", "b"), None, 0.0, 6.0)
    assert evaluate([control], UniformPolicy(), resamples=50).ips.value == pytest.approx(6.0)
    skipped = evaluate([control], GreedyPolicy(), resamples=50)
    assert (skipped.rounds, skipped.skipped) == (0, 1)


def test_doubly_robust_by_hand():
    rounds = [exploring_round("d1", "a", 4.0), exploring_round("d2", "b", 8.0)]
    model = {"a": 1.0, "b": 2.0}
    result = evaluate(rounds, FixedPolicy("b"), reward_model=lambda round_: model, resamples=200)
    # Each round: q(b) + w * (reward - q(logged)); d1 logged "a" (w 0): 2; d2 logged "b" (w 4): 2 + 4 * (8 - 2).
    assert result.dr.value == pytest.approx((2.0 + 26.0) / 2)
    assert result.ips.value == pytest.approx(16.0) and result.dr.low <= result.dr.value <= result.dr.high
    assert evaluate(rounds, FixedPolicy("b"), resamples=50).dr is None  # no model, no doubly robust estimate


# A synthetic world: three contexts, three actions, a logging policy that depends on the context, and a candidate
# that picks its own action per context. With the contexts held fixed, the candidate's true value is exact.
ACTIONS = ("a", "b", "c")
MEAN_REWARD = np.array([[0.10, 0.30, 0.05], [0.40, 0.20, 0.60], [0.15, 0.05, 0.25]])  # context x action
LOGGING = np.array([[0.6, 0.2, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
CANDIDATE = {0: "b", 1: "c", 2: "a"}
CONTEXTS = np.random.default_rng(7).integers(0, 3, size=4000)


def true_value(contexts) -> float:
    return float(np.mean([MEAN_REWARD[x, ACTIONS.index(CANDIDATE[x])] for x in contexts]))


def synthetic_log(contexts, seed: int, *, noisy: bool = True) -> list[Round]:
    """The logging policy's draws; a reward of 1 with the context-action's mean, or the mean itself (noiseless)."""
    rng = np.random.default_rng(seed)
    arms = (rng.random(len(contexts))[:, None] > LOGGING[contexts].cumsum(axis=1)).sum(axis=1)
    means = MEAN_REWARD[contexts, arms]
    rewards = (rng.random(len(contexts)) < means).astype(float) if noisy else means
    logging = [dict(zip(ACTIONS, row, strict=True)) for row in LOGGING]
    return [
        Round(f"r{index}-x{x}", ACTIONS[arm], logging[x], ACTIONS, None, 0.0, float(reward))
        for index, (x, arm, reward) in enumerate(zip(contexts, arms, rewards, strict=True))
    ]


def candidate(rounds: list[Round]) -> LookupPolicy:
    return LookupPolicy({r.decision_id: CANDIDATE[int(r.decision_id.rpartition("x")[2])] for r in rounds})


def perfect_model(round_: Round) -> dict[str, float]:
    return dict(zip(ACTIONS, MEAN_REWARD[int(round_.decision_id.rpartition("x")[2])], strict=True))


def wrong_model(round_: Round) -> dict[str, float]:
    return {"a": 0.9, "b": 0.0, "c": 0.5}  # blind to the context and far from every true mean


def test_ips_snips_and_doubly_robust_cover_the_true_value():
    rounds = synthetic_log(CONTEXTS, seed=1)
    truth = true_value(CONTEXTS)
    logged = statistics.fmean(r.reward for r in rounds)
    for model in (perfect_model, wrong_model):
        result = evaluate(rounds, candidate(rounds), reward_model=model, resamples=400, seed=2)
        assert (result.rounds, result.skipped, result.unsupported) == (4000, 0, 0.0)
        for estimate in (result.ips, result.snips, result.dr):
            assert estimate.low < truth < estimate.high
            assert not estimate.low < logged < estimate.high  # and they tell the candidate from the logging policy
    perfect = evaluate(rounds, candidate(rounds), reward_model=perfect_model, resamples=400, seed=2)
    # A good model removes the weights' share of the variance (the rewards' own noise stays): a narrower interval.
    assert perfect.dr.high - perfect.dr.low < 0.9 * (perfect.ips.high - perfect.ips.low)


def test_doubly_robust_with_a_perfect_model_does_not_depend_on_the_draws():
    contexts = CONTEXTS[:500]
    truth = true_value(contexts)
    ips, dr = [], []
    for seed in range(10):
        rounds = synthetic_log(contexts, seed, noisy=False)
        result = evaluate(rounds, candidate(rounds), reward_model=perfect_model, resamples=20, seed=seed)
        ips.append(result.ips.value)
        dr.append(result.dr.value)
    # Without reward noise every residual is zero: the estimate is the truth whichever actions were logged.
    assert max(abs(value - truth) for value in dr) < 1e-12
    assert statistics.stdev(ips) > 0.005  # while IPS moves with the draws


def test_doubly_robust_with_a_wrong_model_is_still_unbiased():
    contexts = CONTEXTS[:300]
    truth = true_value(contexts)
    dr = []
    for seed in range(300):
        rounds = synthetic_log(contexts, seed)
        dr.append(evaluate(rounds, candidate(rounds), reward_model=wrong_model, resamples=1, seed=seed).dr.value)
    standard_error = statistics.stdev(dr) / math.sqrt(len(dr))
    assert abs(statistics.fmean(dr) - truth) < 3 * standard_error
    # The model alone would be badly off: the weighted residuals are what correct it.
    direct = statistics.fmean(wrong_model(None)[CANDIDATE[x]] for x in contexts)
    assert abs(direct - truth) > 20 * standard_error
