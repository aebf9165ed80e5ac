"""Thompson sampling over the top candidates: the logged first-slot probabilities are exact (a 200,000-draw Monte
Carlo is the oracle), sum to one, and are how often each offer really goes first."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from services.decision.domain.arbitration import THOMPSON, ArbitrationPolicy, arbitrate
from services.decision.domain.eligibility import screen
from services.decision.domain.model import Candidate, Context
from services.decision.domain.pipeline import conclude
from services.decision.domain.thompson import first_probabilities
from tests.unit.test_decision_domain import NOW, catalogue, customer, offer

pytestmark = pytest.mark.unit

CATALOGUE = catalogue(
    offer("a", value=40.0), offer("b", type="cross_sell", value=30.0), offer("c", type="free_shipping", value=20.0)
)
CANDIDATES = [Candidate(o, 0.3, "model_propensity") for o in CATALOGUE.offers]


def thompson(**fields) -> ArbitrationPolicy:
    return ArbitrationPolicy(exploration=THOMPSON, explore_top=3, **fields)


def test_thompson_probabilities_sum_to_one_and_match_how_often_each_offer_goes_first():
    policy, rng = thompson(), random.Random(11)
    firsts: dict[str, int] = {}
    runs = 1500
    for _ in range(runs):
        result = arbitrate(CANDIDATES, Context(), customer(), frozenset(), CATALOGUE, policy, max_offers=2, rng=rng)
        assert sum(result.first_probability.values()) == pytest.approx(1.0)
        first = result.ranked[0].candidate.offer.id
        assert result.shown_probability[first] >= result.first_probability[first] > 0
        firsts[first] = firsts.get(first, 0) + 1
    logged = result.first_probability
    assert logged["a"] > logged["b"] > logged["c"] > 0  # uncertain propensities: every top candidate gets a chance
    for offer_id, probability in logged.items():  # within 4 binomial standard errors of the logged probability
        assert firsts.get(offer_id, 0) / runs == pytest.approx(probability, abs=4 * math.sqrt(probability / runs))


def test_a_confident_model_makes_thompson_almost_greedy():
    result = arbitrate(CANDIDATES, Context(), customer(), frozenset(), CATALOGUE, thompson(thompson_strength=10_000),
                       max_offers=1, rng=random.Random(3))
    assert result.first_probability["a"] > 0.99 and result.ranked[0].candidate.offer.id == "a"


def test_thompson_probabilities_reach_the_decided_offers_and_the_trace():
    who = customer()
    result = conclude(catalogue=CATALOGUE, channel="web", ctx=Context(), customer=who,
                      screening=screen(CATALOGUE, "web", Context(), who, NOW), scores=None, stock=None,
                      warehouse_id="DC1", policy=thompson(), max_offers=3, rng=random.Random(5))
    exploration = result.trace["exploration"]
    assert (exploration["policy"], exploration["strength"]) == ("thompson", 20.0)
    assert sum(exploration["first_probability"].values()) == pytest.approx(1.0)
    # Three offers of three types, three slots: every slate shows all of them.
    assert [o.probability for o in result.offers] == pytest.approx([1.0, 1.0, 1.0])
    assert {e["offer_id"]: e["probability"] for e in result.trace["considered"]} == pytest.approx(
        {"a": 1.0, "b": 1.0, "c": 1.0}
    )


def monte_carlo(propensities, worths, strength, draws=200_000, seed=7):
    """The oracle: how often each candidate's sampled score is the highest over `draws` Thompson draws."""
    p, w = np.asarray(propensities), np.asarray(worths)
    sampled = np.random.default_rng(seed).beta(1 + strength * p, 1 + strength * (1 - p), size=(draws, len(p)))
    return np.bincount(np.argmax(sampled * w, axis=1), minlength=len(p)) / draws


@pytest.mark.parametrize(
    ("propensities", "worths", "strength"),
    [
        ((0.3, 0.3, 0.3), (40.0, 30.0, 20.0), 20.0),  # the default prior, the offers above
        ((0.05, 0.2, 0.5, 0.12, 0.3), (30.0, 8.0, 3.0, 11.0, 5.0), 20.0),  # close scores, five candidates
        ((0.31, 0.30, 0.29), (1.0, 1.0, 1.0), 10_000.0),  # a confident model: narrow, overlapping peaks
        ((0.001, 0.002, 0.0, 0.97), (1.0, 1.0, 1.0, 0.002), 2.0),  # weak prior, densities steep at both ends
    ],
)
def test_exact_probabilities_sum_to_one_and_match_a_large_monte_carlo(propensities, worths, strength):
    exact = np.array(first_probabilities(propensities, worths, strength))
    assert exact.sum() == pytest.approx(1.0, abs=1e-12) and (exact >= 0).all()
    draws = 200_000
    oracle = monte_carlo(propensities, worths, strength, draws)
    # Within 3 standard errors of the oracle (plus a floor for probabilities so small the oracle sees ~no wins).
    standard_error = np.sqrt(exact * (1 - exact) / draws)
    assert (np.abs(exact - oracle) <= 3 * standard_error + 1e-5).all(), (exact, oracle)


def test_exact_probabilities_of_twenty_candidates_match_the_monte_carlo():
    rng = np.random.default_rng(3)
    propensities, worths = rng.uniform(0.02, 0.6, 20), rng.uniform(5, 50, 20)
    exact = np.array(first_probabilities(propensities, worths, 20.0))
    oracle = monte_carlo(propensities, worths, 20.0)
    assert exact.sum() == pytest.approx(1.0, abs=1e-12)
    assert (np.abs(exact - oracle) <= 3 * np.sqrt(exact * (1 - exact) / 200_000) + 1e-5).all()


def test_exact_probabilities_follow_symmetry_and_degenerate_worths():
    # Identical candidates are exchangeable: each wins exactly as often.
    assert first_probabilities((0.4, 0.4, 0.4, 0.4), (7.0, 7.0, 7.0, 7.0), 20.0) == pytest.approx((0.25,) * 4, abs=1e-9)
    # A zero worth always scores 0: it never wins against a positive one; all zero is a tie the first wins.
    assert first_probabilities((0.9, 0.1), (0.0, 3.0), 20.0) == (0.0, 1.0)
    assert first_probabilities((0.9, 0.1), (0.0, 0.0), 20.0) == (1.0, 0.0)
    # The same posterior parameters give the same (cached) answer, as the log needs.
    assert first_probabilities((0.2, 0.3), (5.0, 4.0), 20.0) == first_probabilities([0.2, 0.3], [5.0, 4.0], 20.0)
