"""Model traits in the decision: predicted lifetime value and churn risk drive the call priority and the value factor
of retention offers; a customer never scored keeps the rule-based answers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.decision.catalogue import Catalogue, parse_catalogue
from services.decision.domain.arbitration import ArbitrationPolicy, arbitrate
from services.decision.domain.eligibility import screen
from services.decision.domain.explain import considered_offer
from services.decision.domain.model import Candidate, Context, CustomerView, Prediction, Traits
from services.decision.domain.pipeline import Scores, conclude
from services.decision.domain.priority import call_priority
from services.decision.domain.value import value_factor

pytestmark = pytest.mark.unit

LTV, CHURN = "ltv-v7", "churn-v3"


def caller(**traits) -> CustomerView:
    return CustomerView("c-1", True, Traits(**traits), consents=frozenset({("marketing", "call_center")}))


def ltv(value: float) -> Prediction:
    return Prediction(value, LTV)


def churn(value: float) -> Prediction:
    return Prediction(value, CHURN)


# --- call priority: churn risk ----------------------------------------------------------------------------------

REGULAR = dict(loyalty_tier="silver", net_value=400.0, order_count=4)


def test_a_high_churn_risk_raises_priority_and_names_the_model_version():
    unscored = call_priority(caller(**REGULAR), "order_status")
    risky = call_priority(caller(**REGULAR, churn_risk=churn(0.8)), "order_status")
    assert risky.priority == unscored.priority + 16  # 20 x 0.8
    assert risky.reasons == (*unscored.reasons, f"churn_risk_model:{CHURN}")


def test_a_low_churn_risk_adds_its_few_points_without_a_reason():
    unscored = call_priority(caller(**REGULAR), "order_status")
    calm = call_priority(caller(**REGULAR, churn_risk=churn(0.2)), "order_status")
    assert calm.priority == unscored.priority + 4 and calm.reasons == unscored.reasons


def test_churn_from_the_call_reason_and_the_model_is_counted_once_the_larger_wins():
    base = call_priority(caller(**REGULAR), "order_status").priority
    cancel_unscored = call_priority(caller(**REGULAR), "cancel")
    cancel_risky = call_priority(caller(**REGULAR, churn_risk=churn(0.95)), "cancel")
    cancel_calm = call_priority(caller(**REGULAR, churn_risk=churn(0.1)), "cancel")
    assert cancel_unscored.priority == base + 15  # today's rule: the call reason alone
    assert cancel_risky.priority == base + 19  # max(15, 20 x 0.95), not 15 + 19
    assert cancel_calm.priority == base + 15  # the caller's words outweigh a calm model
    assert {"churn_risk_call_reason", f"churn_risk_model:{CHURN}"} <= set(cancel_risky.reasons)
    assert f"churn_risk_model:{CHURN}" not in cancel_calm.reasons


# --- call priority: predicted value -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "points"),
    [(5000.0, 30), (2000.0, 30), (1999.0, 25), (1000.0, 25), (500.0, 20), (200.0, 12), (50.0, 6), (49.0, 0), (0, 0)],
)
def test_predicted_value_points_follow_the_bands(predicted, points):
    nothing = call_priority(caller(loyalty_tier="bronze"), "order_status")
    scored = call_priority(caller(loyalty_tier="bronze", predicted_ltv=ltv(predicted)), "order_status")
    assert scored.priority - nothing.priority == points
    assert (f"high_predicted_value:{LTV}" in scored.reasons) is (points >= 20)


def test_predicted_value_replaces_net_value_a_lapsed_big_spender_drops_back():
    history = dict(loyalty_tier="gold", net_value=2500.0, order_count=3)
    unscored = call_priority(caller(**history), "order_status")
    lapsed = call_priority(caller(**history, predicted_ltv=ltv(20.0)), "order_status")
    rising = call_priority(caller(**history, predicted_ltv=ltv(1500.0)), "order_status")
    assert "high_value" in unscored.reasons  # net value 2,500: 10 x log10(251) = 24 points
    assert lapsed.priority == unscored.priority - 24 and "high_value" not in lapsed.reasons
    assert rising.priority == unscored.priority + 1  # 25 points instead of 24
    assert rising.reasons == (f"high_predicted_value:{LTV}", "gold_tier")


# --- value factor of retention offers ---------------------------------------------------------------------------


def catalogue() -> Catalogue:
    offers = [
        {
            "id": "perk",
            "name": "Perk",
            "type": "loyalty_perk",
            "channels": ["call_center"],
            "value": 8.0,
            "base_propensity": 0.3,
        },
        {
            "id": "callback",
            "name": "Callback",
            "type": "service_action",
            "channels": ["call_center"],
            "value": 2.0,
            "base_propensity": 0.5,
        },
        {
            "id": "discount",
            "name": "Discount",
            "type": "discount",
            "channels": ["call_center"],
            "value": 12.0,
            "base_propensity": 0.3,
        },
    ]
    return parse_catalogue({"version": "t1", "offers": offers}, {"products": []})


@pytest.mark.parametrize(
    ("offer_id", "predicted", "expected"),
    [
        ("perk", 500.0, (1.5, f"predicted_ltv:{LTV}")),
        ("callback", 250.0, (1.25, f"predicted_ltv:{LTV}")),
        ("perk", 1000.0, (2.0, f"predicted_ltv:{LTV}")),
        ("perk", 50_000.0, (2.0, f"predicted_ltv:{LTV}")),  # capped
        ("perk", 0.0, (1.0, "")),
        ("perk", None, (1.0, "")),  # never scored
        ("discount", 5000.0, (1.0, "")),  # not a retention offer
    ],
)
def test_value_factor_grows_with_predicted_ltv_for_retention_offers_only(offer_id, predicted, expected):
    who = caller(predicted_ltv=ltv(predicted) if predicted is not None else None)
    assert value_factor(catalogue().offer(offer_id), who) == pytest.approx(expected)


def test_a_valuable_customer_gets_the_retention_offer_first():
    cat = catalogue()
    candidates = [Candidate(o, o.base_propensity, "rule_propensity") for o in cat.offers]
    policy = ArbitrationPolicy()

    def ranking(who: CustomerView):
        return arbitrate(candidates, Context(), who, frozenset(), cat, policy, max_offers=3)

    plain = ranking(caller())
    valued = ranking(caller(predicted_ltv=ltv(1000.0)))
    assert [s.candidate.offer.id for s in plain.ranked] == ["discount", "perk", "callback"]  # 3.6 > 2.4 > 1.0
    assert [s.candidate.offer.id for s in valued.ranked] == ["perk", "discount", "callback"]  # 4.8 > 3.6 > 2.0
    perk = valued.ranked[0]
    assert (perk.value_factor, perk.value_source, perk.score) == (2.0, f"predicted_ltv:{LTV}", pytest.approx(4.8))
    assert all(s.value_factor == 1.0 and s.value_source == "" for s in plain.scored)


def test_the_trace_and_explain_record_the_value_factor():
    cat = catalogue()
    who = caller(predicted_ltv=ltv(400.0))
    now = datetime(2025, 6, 1, tzinfo=UTC)
    result = conclude(
        catalogue=cat,
        channel="call_center",
        ctx=Context(),
        customer=who,
        screening=screen(cat, "call_center", Context(), who, now),
        scores=Scores("m1", {}),
        stock=None,
        warehouse_id="DC1",
        policy=ArbitrationPolicy(),
        max_offers=3,
    )
    entries = {e["offer_id"]: e for e in result.trace["considered"]}
    assert entries["perk"]["value_factor"] == pytest.approx(1.4)
    assert entries["perk"]["value_factor_source"] == f"predicted_ltv:{LTV}"
    assert entries["discount"]["value_factor"] == 1.0 and entries["discount"]["value_factor_source"] == ""
    explained = considered_offer(entries["perk"])
    assert (explained.value_factor, explained.value_factor_source) == (pytest.approx(1.4), f"predicted_ltv:{LTV}")
    assert explained.score == pytest.approx(0.3 * 8.0 * 1.4)
    perk = next(o for o in result.offers if o.offer_id == "perk")
    assert f"predicted_ltv:{LTV}" in perk.reason_codes
    # A decision logged before the value factor existed reads as factor 1.
    old = {k: v for k, v in entries["discount"].items() if not k.startswith("value_factor")}
    assert considered_offer(old).value_factor == 1.0
