"""Thompson sampling over the top candidates: logged first-slot probabilities sum to one and match the policy."""

from __future__ import annotations

import random

import pytest

from services.decision.domain.arbitration import THOMPSON, ArbitrationPolicy, arbitrate
from services.decision.domain.eligibility import screen
from services.decision.domain.model import Candidate, Context
from services.decision.domain.pipeline import conclude
from tests.unit.test_decision_domain import NOW, catalogue, customer, offer

pytestmark = pytest.mark.unit

CATALOGUE = catalogue(
    offer("a", value=40.0), offer("b", type="cross_sell", value=30.0), offer("c", type="free_shipping", value=20.0)
)
CANDIDATES = [Candidate(o, 0.3, "model_propensity") for o in CATALOGUE.offers]


def thompson(**fields) -> ArbitrationPolicy:
    return ArbitrationPolicy(exploration=THOMPSON, explore_top=3, **fields)


def test_thompson_probabilities_sum_to_one_and_match_how_often_each_offer_goes_first():
    policy, rng = thompson(thompson_draws=2000), random.Random(11)
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
    for offer_id, probability in logged.items():
        assert firsts.get(offer_id, 0) / runs == pytest.approx(probability, abs=0.04)


def test_a_confident_model_makes_thompson_almost_greedy():
    result = arbitrate(CANDIDATES, Context(), customer(), frozenset(), CATALOGUE, thompson(thompson_strength=10_000),
                       max_offers=1, rng=random.Random(3))
    assert result.first_probability["a"] > 0.99 and result.ranked[0].candidate.offer.id == "a"


def test_thompson_probabilities_reach_the_decided_offers_and_the_trace():
    who = customer()
    result = conclude(catalogue=CATALOGUE, channel="web", ctx=Context(), customer=who,
                      screening=screen(CATALOGUE, "web", Context(), who, NOW), scores=None, stock=None,
                      warehouse_id="DC1", policy=thompson(thompson_draws=500), max_offers=3, rng=random.Random(5))
    exploration = result.trace["exploration"]
    assert (exploration["policy"], exploration["draws"]) == ("thompson", 500)
    assert sum(exploration["first_probability"].values()) == pytest.approx(1.0)
    # Three offers of three types, three slots: every slate shows all of them.
    assert [o.probability for o in result.offers] == pytest.approx([1.0, 1.0, 1.0])
    assert {e["offer_id"]: e["probability"] for e in result.trace["considered"]} == pytest.approx(
        {"a": 1.0, "b": 1.0, "c": 1.0}
    )
