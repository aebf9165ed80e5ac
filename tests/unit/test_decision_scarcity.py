"""Scarcity: catalogue validation, the value percentile, suppression of low-value customers, loyal ones first."""

from __future__ import annotations

import pytest

from services.decision.catalogue import CatalogueError, parse_catalogue
from services.decision.domain.arbitration import ArbitrationPolicy
from services.decision.domain.eligibility import screen
from services.decision.domain.explain import considered_offer
from services.decision.domain.model import Context, CustomerView
from services.decision.domain.pipeline import conclude
from services.decision.domain.priority import call_priority
from services.decision.domain.scarcity import value_percentile
from tests.unit.test_decision_domain import NOW, PRODUCTS, catalogue, customer, offer, stock

pytestmark = pytest.mark.unit

SCARCITY = {
    "below_units": 3,
    "min_value_percentile": 80,
    "value_percentiles": {"50": 300, "80": 1200, "95": 4000},
    "loyal_tiers": ["gold", "platinum"],
}


def scarce_offer(**fields) -> dict:
    return offer("shoe-drop", product_id="P-SHOE", scarcity=SCARCITY, **fields)


def decide(cat, who: CustomerView, units: int):
    levels = stock(("SHOE-42-BLK", "DC1", units), ("SOCK-M-GRY", "DC1", 10))
    return conclude(
        catalogue=cat, channel="web", ctx=Context(), customer=who, screening=screen(cat, "web", Context(), who, NOW),
        scores=None, stock=levels, warehouse_id="DC1", policy=ArbitrationPolicy(), max_offers=3,
    )


@pytest.mark.parametrize(
    ("scarcity", "message"),
    [
        ({**SCARCITY, "below_units": 0}, "scarcity.below_units: must be at least 1"),
        ({k: v for k, v in SCARCITY.items() if k != "below_units"}, "scarcity.below_units: required"),
        ({**SCARCITY, "min_value_percentile": 120}, "scarcity.min_value_percentile: expected a number in (0, 100]"),
        ({**SCARCITY, "value_percentiles": {"top": 5}}, "scarcity.value_percentiles['top']: not a percentile"),
        ({**SCARCITY, "value_percentiles": {"50": 900, "80": 100}}, "must not fall as the percentile rises (50 -> 80)"),
        ({**SCARCITY, "value_percentiles": {"50": 300}}, "no listed percentile reaches min_value_percentile 80"),
        ({**SCARCITY, "loyal_tiers": ["diamond"]}, "scarcity.loyal_tiers: expected a list of tiers"),
        ({**SCARCITY, "limit": 1}, "scarcity: unknown key(s) ['limit']"),
    ],
)
def test_scarcity_policy_errors_name_the_field(scarcity, message):
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue({"offers": [offer("o", product_id="P-SHOE", scarcity=scarcity)]}, {"products": PRODUCTS})
    assert str(caught.value).startswith("offers[0].scarcity") and message in str(caught.value)


def test_scarcity_needs_a_product():
    with pytest.raises(CatalogueError, match=r"offers\[0\].scarcity: needs the offer's product_id"):
        parse_catalogue({"offers": [offer("o", scarcity=SCARCITY)]}, {"products": PRODUCTS})


def test_value_percentile_is_the_highest_listed_percentile_reached():
    policy = catalogue(scarce_offer()).offers[0].scarcity
    assert [value_percentile(v, policy) for v in (0, 299, 300, 1199, 1200, 5000)] == [0, 0, 50, 50, 80, 95]


def test_scarce_offer_is_removed_for_low_value_customers_and_the_trace_says_why():
    cat = catalogue(scarce_offer(), offer("sock-deal", product_id="P-SOCK"))
    low = decide(cat, customer(net_value=500, loyalty_tier="silver"), units=2)
    assert [o.offer_id for o in low.offers] == ["sock-deal"]
    entry = next(e for e in low.trace["considered"] if e["offer_id"] == "shoe-drop")
    assert entry["removed"] == "scarce_low_value"
    assert entry["why"] == (
        "2 unit(s) left at DC1 (scarce below 3); value percentile 50 below 80 and tier silver not loyal"
    )
    explained = considered_offer(entry)  # Explain reads the same entry
    assert (explained.fate, explained.removed_by) == ("removed", "scarce_low_value")


@pytest.mark.parametrize(
    ("traits", "code"),
    [({"net_value": 1500}, "scarce_high_value"), ({"net_value": 10, "loyalty_tier": "gold"}, "scarce_loyal")],
)
def test_high_value_and_loyal_customers_keep_a_scarce_offer(traits, code):
    kept = decide(catalogue(scarce_offer()), customer(**traits), units=2)
    assert [o.offer_id for o in kept.offers] == ["shoe-drop"]
    assert code in kept.offers[0].reason_codes


def test_plenty_of_stock_means_no_scarcity_and_an_anonymous_visitor_loses_a_scarce_offer():
    plenty = decide(catalogue(scarce_offer()), customer(net_value=0), units=3)
    assert [o.offer_id for o in plenty.offers] == ["shoe-drop"]
    assert not any(code.startswith("scarce") for code in plenty.offers[0].reason_codes)
    anonymous = decide(catalogue(scarce_offer(marketing=False)), CustomerView(), units=1)
    assert anonymous.offers == () and anonymous.no_offer_reason == "nothing_eligible"


def test_a_scarce_item_call_puts_loyal_customers_first():
    gold = customer(loyalty_tier="gold", net_value=800, order_count=3)
    silver = customer(loyalty_tier="silver", net_value=800, order_count=3)
    campaign, usual = call_priority(gold, "scarce_item"), call_priority(gold, "order_status")
    assert campaign.priority == usual.priority + 15 and "scarce_item_loyal" in campaign.reasons
    assert call_priority(silver, "scarce_item") == call_priority(silver, "order_status")
