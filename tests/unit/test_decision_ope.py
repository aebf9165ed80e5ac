"""Off-policy evaluation of the first slot: logged rounds from stored traces, and IPS / SNIPS worked by hand."""

from __future__ import annotations

import math

import pytest

from services.decision.domain.ope import NO_OFFER, GreedyPolicy, Round, UniformPolicy, evaluate, logged_round

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
