"""Buy-now for scarce offers kept for loyal / high-value customers, per channel; and no offers of what was returned."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from services.decision.domain.agent import avoid_lines
from services.decision.domain.arbitration import ArbitrationPolicy
from services.decision.domain.eligibility import screen
from services.decision.domain.explain import considered_offer
from services.decision.domain.model import Context, CustomerView, Preferences, ReturnedItem
from services.decision.domain.pipeline import conclude
from services.decision.domain.returns import recently_returned
from tests.unit.test_decision_domain import NOW, catalogue, customer, offer, stock
from tests.unit.test_decision_scarcity import SCARCITY

pytestmark = pytest.mark.unit

GOLD = {"loyalty_tier": "gold", "net_value": 10, "preferences": Preferences(("42",), ("red",), "express")}


def shoe_drop(**fields) -> dict:
    return offer("shoe-drop", name="Trail Shoe drop", product_id="P-SHOE", scarcity=SCARCITY, **fields)


def decide(cat, who: CustomerView, channel: str, levels, ctx: Context | None = None, **kwargs):
    ctx = ctx or Context()
    return conclude(
        catalogue=cat,
        channel=channel,
        ctx=ctx,
        customer=who,
        screening=screen(cat, channel, ctx, who, NOW),
        scores=None,
        stock=levels,
        warehouse_id="DC1",
        policy=ArbitrationPolicy(),
        max_offers=3,
        **kwargs,
    )


# --- buy now ----------------------------------------------------------------------------------------------------


def test_web_buy_now_is_an_express_checkout_of_the_customers_variant_in_stock():
    levels = stock(("SHOE-42-RED", "DC1", 1), ("SHOE-40-BLK", "DC1", 1))
    result = decide(catalogue(shoe_drop()), customer(**GOLD), "web", levels, buy_now_hold=timedelta(minutes=10))
    [shown] = result.offers
    prefill = shown.prefill
    assert (prefill.action, prefill.sku, prefill.quantity, prefill.shipping_method) == (
        "buy_now",
        "SHOE-42-RED",
        1,
        "express",
    )
    assert (prefill.units_left, prefill.hold_seconds) == (2, 600)
    assert shown.headline == "Only 2 left — reserved for gold members: buy now."
    assert "buy_now" in shown.reason_codes and "scarce_loyal" in shown.reason_codes
    entry = next(e for e in result.trace["considered"] if e["offer_id"] == "shoe-drop")
    assert entry["buy_now"] == {"code": "scarce_loyal", "units_left": 2, "location_id": "DC1", "hold_seconds": 600}
    assert considered_offer(entry).why == (
        "buy now (scarce_loyal): 2 unit(s) left at DC1 (scarce below 3); gold tier goes first"
    )


def test_high_value_customers_get_buy_now_and_plenty_of_stock_stays_add_to_cart():
    rich = decide(catalogue(shoe_drop()), customer(net_value=1500), "web", stock(("SHOE-42-BLK", "DC1", 2)))
    assert rich.offers[0].prefill.action == "buy_now"
    assert rich.offers[0].headline == "Only 2 left — reserved for our best customers: buy now."
    plenty = decide(catalogue(shoe_drop()), customer(**GOLD), "web", stock(("SHOE-42-BLK", "DC1", 5)))
    [shown] = plenty.offers
    assert (shown.prefill.action, shown.prefill.units_left, shown.prefill.hold_seconds) == ("add_to_cart", 0, 0)
    assert shown.headline == "" and "buy_now" not in shown.reason_codes
    assert "buy_now" not in plenty.trace["considered"][0]


def test_a_bronze_customer_gets_no_buy_now_the_offer_is_withheld():
    result = decide(catalogue(shoe_drop()), customer(loyalty_tier="bronze"), "web", stock(("SHOE-42-BLK", "DC1", 2)))
    assert result.offers == ()
    assert result.trace["considered"][0]["removed"] == "scarce_low_value"


def test_pos_tells_the_associate_to_sell_it_now():
    ctx = Context(store_id="S1")
    levels = stock(("SHOE-42-BLK", "S1", 2))
    [shown] = decide(catalogue(shoe_drop()), customer(**GOLD), "pos", levels, ctx).offers
    assert shown.script.startswith("2 left in store — loyal gold customer: sell it now, or reserve one for them. ")
    assert shown.prefill is None and "buy_now" in shown.reason_codes


@pytest.mark.parametrize(
    ("reason", "lead"), [("scarce_item", "Offer this first"), ("order_status", "Offer to order it now")]
)
def test_the_agent_script_offers_the_buy_now_first_on_a_scarce_item_call(reason, lead):
    ctx = Context(call_reason=reason)
    [shown] = decide(
        catalogue(shoe_drop()), customer(**GOLD), "call_center", stock(("SHOE-42-BLK", "DC1", 1)), ctx
    ).offers
    assert shown.script.startswith(
        f"{lead}: Trail Shoe drop — only 1 left, kept for gold members; they can buy it now on this call."
    )


# --- recently returned ------------------------------------------------------------------------------------------


def returns(*items: tuple[str, str, int]) -> tuple[ReturnedItem, ...]:
    """(sku, category as the profile has it, days ago)."""
    return tuple(ReturnedItem(sku, category, NOW - timedelta(days=days)) for sku, category, days in items)


def test_offers_of_a_returned_product_or_category_are_removed_with_why_service_actions_stay():
    cat = catalogue(
        offer("boot-deal", product_id="P-BOOT"),  # same category as the returned shoe
        offer("shoe-deal", product_id="P-SHOE"),  # the returned product
        offer("sock-deal", product_id="P-SOCK"),
        offer("free-ship", type="free_shipping"),  # about no product
        offer("shoe-fix", type="service_action", product_id="P-SHOE", marketing=False),
    )
    who = customer(recently_returned=returns(("SHOE-42-BLK", "", 5)))
    screening = screen(cat, "web", Context(), who, NOW)
    assert [o.id for o in screening.eligible] == ["sock-deal", "free-ship", "shoe-fix"]
    assert screening.removed == {"boot-deal": "recently_returned", "shoe-deal": "recently_returned"}
    assert screening.details["shoe-deal"]["why"] == "returned Trail Shoe (SHOE-42-BLK) on 2025-05-27, within 30 days"
    assert screening.details["boot-deal"]["why"] == "returned a shoes item on 2025-05-27, within 30 days"


def test_returns_outside_the_window_or_with_the_filter_off_remove_nothing():
    cat = catalogue(offer("shoe-deal", product_id="P-SHOE"))
    old = customer(recently_returned=returns(("SHOE-42-BLK", "shoes", 31)))
    assert [o.id for o in screen(cat, "web", Context(), old, NOW).eligible] == ["shoe-deal"]
    recent = customer(recently_returned=returns(("SHOE-42-BLK", "shoes", 31)))
    assert screen(cat, "web", Context(), recent, NOW, returned_within=timedelta(days=45)).removed == {
        "shoe-deal": "recently_returned"
    }
    assert screen(cat, "web", Context(), recent, NOW, returned_within=timedelta(0)).removed == {}


def test_the_returns_category_counts_even_for_a_sku_the_catalogue_does_not_know():
    cat = catalogue(offer("sock-deal", product_id="P-SOCK"), offer("shoe-deal", product_id="P-SHOE"))
    who = customer(recently_returned=returns(("OTHER-SOCK", "accessories", 2)))
    assert screen(cat, "web", Context(), who, NOW).removed == {"sock-deal": "recently_returned"}


def test_the_agent_is_told_which_categories_not_to_offer_newest_first():
    cat = catalogue()
    who = customer(
        recent_returns=2,
        recently_returned=returns(("SOCK-M-GRY", "", 9), ("SHOE-42-BLK", "", 3), ("BOOT-42-BRN", "", 6)),
    )
    returned = recently_returned(who, cat, NOW, timedelta(days=30))
    assert avoid_lines(who, "order_status", returned) == (
        "Do not offer shoes: returned on 2025-05-29.",
        "Do not offer accessories: returned on 2025-05-23.",
    )
    unknown = customer(recent_returns=1, recently_returned=returns(("GONE-1", "", 3)))
    assert avoid_lines(unknown, "", recently_returned(unknown, cat, NOW, timedelta(days=30))) == (
        "Do not recommend products like the ones they returned (1 return(s) in 30 days).",
    )


def test_cel_rules_see_the_returned_categories():
    rule = {
        "id": "not_returned",
        "stage": "suitability",
        "when": '!("accessories" in customer.returned_categories)',
        "why": "returned accessories",
    }
    cat = catalogue(offer("free-ship", type="free_shipping", rules=[rule]))
    who = customer(recently_returned=returns(("SOCK-M-GRY", "", 2)))
    screening = screen(cat, "web", Context(), who, NOW)
    assert screening.removed == {"free-ship": "rule:not_returned"}
    fresh = replace(who, traits=replace(who.traits, recently_returned=()))
    assert [o.id for o in screen(cat, "web", Context(), fresh, NOW).eligible] == ["free-ship"]
