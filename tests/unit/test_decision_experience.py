"""The channel experience (web pre-fill, POS actions and stock hints, scripts) and the call-queue priority."""

from __future__ import annotations

import pytest

from services.decision.catalogue import parse_catalogue
from services.decision.domain.experience import (
    associate_actions,
    choose_variant,
    offer_script,
    stock_hints,
    web_prefill,
)
from services.decision.domain.model import Context, CustomerView, Preferences, StockLevel, StockView, Traits
from services.decision.domain.priority import call_priority

pytestmark = pytest.mark.unit

CATALOGUE = parse_catalogue(
    {
        "version": "x1",
        "offers": [
            {"id": "jacket-10", "name": "10% off the jacket", "type": "discount", "channels": ["web", "pos"],
             "value": 12.0, "base_propensity": 0.2, "product_id": "P-JACKET"},
            {"id": "jacket-pre", "name": "Pre-order the jacket", "type": "pre_order", "channels": ["web"],
             "value": 9.0, "base_propensity": 0.1, "product_id": "P-JACKET"},
            {"id": "free-ship", "name": "Free shipping", "type": "free_shipping", "channels": ["web", "call_center"],
             "value": 5.0, "base_propensity": 0.3, "script": "Tell them shipping is on us today."},
        ],
    },
    {
        "products": [
            {"product_id": "P-JACKET", "name": "Rain Jacket", "category": "outerwear", "price": 100.0, "variants": [
                {"sku": "J-S-BLUE", "size": "S", "colour": "blue"},
                {"sku": "J-M-BLUE", "size": "M", "colour": "blue"},
                {"sku": "J-M-GREEN", "size": "M", "colour": "green"},
                {"sku": "J-L-GREEN", "size": "L", "colour": "green"},
            ]},
            {"product_id": "P-PARKA", "name": "Parka", "category": "outerwear", "price": 200.0, "variants": [
                {"sku": "PK-L-BLACK", "size": "L", "colour": "black"},
                {"sku": "PK-M-BLACK", "size": "M", "colour": "black"},
            ]},
        ]
    },
)
JACKET = CATALOGUE.products["P-JACKET"]
KINDS = {"DC1": "warehouse"}


def stock(*levels: tuple[str, str, int]) -> StockView:
    return StockView(
        StockLevel(sku, CATALOGUE.product_of_sku[sku], loc, KINDS.get(loc, "store"), units)
        for sku, loc, units in levels
    )


def shopper(sizes=(), colours=(), shipping_method="") -> CustomerView:
    return CustomerView("c-1", True, Traits(preferences=Preferences(tuple(sizes), tuple(colours), shipping_method)))


# --- web pre-fill -----------------------------------------------------------------------------------------------

def test_prefill_picks_the_in_stock_variant_in_the_preferred_size_then_colour():
    levels = stock(("J-S-BLUE", "DC1", 5), ("J-M-BLUE", "DC1", 0), ("J-M-GREEN", "DC1", 2), ("J-L-GREEN", "DC1", 1))
    prefill = web_prefill(CATALOGUE.offer("jacket-10"), Context(), shopper(["M", "L"], ["blue"], "express"),
                          CATALOGUE, levels, "DC1")
    # Blue M is sold out: the preferred size M in the next colour wins over an in-stock blue S.
    assert (prefill.sku, prefill.size, prefill.colour, prefill.quantity, prefill.shipping_method) == (
        "J-M-GREEN", "M", "green", 1, "express")


def test_prefill_without_preferences_takes_the_first_in_stock_variant_and_standard_shipping():
    levels = stock(("J-S-BLUE", "DC1", 0), ("J-M-BLUE", "DC1", 3), ("J-L-GREEN", "DC1", 3))
    prefill = web_prefill(CATALOGUE.offer("jacket-10"), Context(), shopper(), CATALOGUE, levels, "DC1")
    assert (prefill.sku, prefill.shipping_method) == ("J-M-BLUE", "standard")


def test_prefill_for_an_offer_without_product_uses_the_viewed_product():
    levels = stock(("J-L-GREEN", "DC1", 3))
    prefill = web_prefill(CATALOGUE.offer("free-ship"), Context(sku="J-S-BLUE"), shopper(), CATALOGUE, levels, "DC1")
    assert prefill.sku == "J-L-GREEN"
    assert web_prefill(CATALOGUE.offer("free-ship"), Context(), shopper(), CATALOGUE, levels, "DC1") is None


def test_pre_order_prefill_is_the_sold_out_variant_the_customer_looks_at():
    prefill = web_prefill(CATALOGUE.offer("jacket-pre"), Context(sku="J-M-GREEN"), shopper(["S"]), CATALOGUE,
                          stock(), "DC1")
    assert prefill.sku == "J-M-GREEN"


def test_choose_variant_returns_none_when_nothing_is_available():
    assert choose_variant(JACKET, lambda sku: False, Preferences()) is None


# --- POS: associate actions, stock hints, scripts ---------------------------------------------------------------

def _actions(levels: StockView, sku: str = "J-M-BLUE", who: CustomerView | None = None) -> dict:
    found = associate_actions(Context(sku=sku, store_id="S1"), who or shopper(), CATALOGUE, levels, "S1", "DC1")
    return {c.offer.id: c for c in found}


def test_no_actions_when_the_wanted_sku_is_on_the_shelf():
    assert _actions(stock(("J-M-BLUE", "S1", 1), ("J-M-BLUE", "DC1", 9))) == {}


def test_sold_out_in_store_gives_alternative_ship_to_home_and_reserve_nearby():
    levels = stock(
        ("J-M-BLUE", "S1", 0),
        ("J-S-BLUE", "S1", 6),
        ("J-M-GREEN", "S1", 2),  # same size, other colour: preferred over more units in another size
        ("J-M-BLUE", "DC1", 12),
        ("J-M-BLUE", "S2", 1),
        ("J-M-BLUE", "S3", 4),
    )
    actions = _actions(levels)
    assert set(actions) == {"action:in_store_alternative", "action:ship_to_home", "action:reserve_nearby"}

    alternative = actions["action:in_store_alternative"]
    assert alternative.offer.type == "service_action" and not alternative.offer.marketing
    assert [(h.sku, h.location_id, h.on_hand) for h in alternative.stock] == [("J-M-GREEN", "S1", 2)]
    assert "green size M" in alternative.offer.script and "2 on the shelf" in alternative.offer.script
    assert alternative.propensity == 0.5 and alternative.propensity_source == "rule_propensity"

    ship = actions["action:ship_to_home"]
    assert [(h.sku, h.location_id, h.on_hand) for h in ship.stock] == [("J-M-BLUE", "DC1", 12)]
    assert "ship it home" in ship.offer.script

    nearby = actions["action:reserve_nearby"]
    assert [(h.sku, h.location_id, h.on_hand) for h in nearby.stock] == [("J-M-BLUE", "S3", 4)]
    assert "store S3" in nearby.offer.script
    # Each action competes for its own slot, not for the jacket's.
    assert {c.key for c in actions.values()} == set(actions)


def test_alternative_falls_back_to_a_same_category_product_in_the_wanted_size():
    levels = stock(("PK-L-BLACK", "S1", 5), ("PK-M-BLACK", "S1", 1))
    actions = _actions(levels)
    assert set(actions) == {"action:in_store_alternative"}
    substitute = actions["action:in_store_alternative"]
    assert substitute.offer.product_id == "P-PARKA"
    assert substitute.stock[0].sku == "PK-M-BLACK"  # size M like the wanted jacket, despite fewer units
    assert substitute.propensity == 0.3 and substitute.offer.value == pytest.approx(60.0)


def test_stock_hints_list_this_store_first_then_other_locations_by_units():
    levels = stock(("J-M-BLUE", "S1", 1), ("J-S-BLUE", "S1", 3), ("J-M-BLUE", "S2", 9), ("J-L-GREEN", "DC1", 20),
                   ("J-M-GREEN", "S2", 0))
    hints = stock_hints(JACKET, levels, "S1")
    assert [(h.sku, h.location_id) for h in hints] == [
        ("J-S-BLUE", "S1"), ("J-M-BLUE", "S1"), ("J-L-GREEN", "DC1"), ("J-M-BLUE", "S2")
    ]
    assert stock_hints(JACKET, None, "S1") == ()


def test_scripts_use_the_catalogue_text_and_add_shelf_stock_at_pos():
    levels = stock(("J-M-BLUE", "S1", 2), ("J-S-BLUE", "S1", 1))
    assert offer_script(CATALOGUE.offer("free-ship"), "call_center", CATALOGUE, levels, "") == (
        "Tell them shipping is on us today.")
    assert offer_script(CATALOGUE.offer("jacket-10"), "pos", CATALOGUE, levels, "S1") == (
        "Offer: 10% off the jacket. Rain Jacket: 3 in this store.")


# --- call priority ----------------------------------------------------------------------------------------------

def caller(known=True, **traits) -> CustomerView:
    return CustomerView("c-1" if known else "", known, Traits(**traits))


def test_a_loyal_high_value_gold_customer_outranks_a_new_one():
    loyal = call_priority(caller(loyalty_tier="gold", net_value=2500.0, order_count=12), "order_status")
    new = call_priority(caller(known=False), "order_status")
    assert loyal.priority > new.priority
    assert (loyal.tier, new.tier) == ("priority", "standard")
    assert loyal.reasons == ("high_value", "gold_tier", "frequent_buyer")
    assert new.reasons == ("new_or_unknown_caller",)


def test_churn_risk_and_open_issues_raise_urgency_to_vip():
    calm = call_priority(caller(loyalty_tier="gold", net_value=2500.0, order_count=12), "order_status")
    upset = call_priority(
        caller(loyalty_tier="gold", net_value=2500.0, order_count=12, open_service_issues=1, recent_returns=1),
        "Complaint",
    )
    assert upset.priority == calm.priority + 8 + 4 + 12
    assert upset.tier == "vip"
    assert {"open_issue", "recent_returns", "churn_risk_call_reason"} <= set(upset.reasons)


def test_priority_is_clamped_to_100():
    top = call_priority(
        caller(loyalty_tier="platinum", net_value=1e9, order_count=500, open_service_issues=9, recent_returns=9),
        "cancel",
    )
    assert (top.priority, top.tier) == (100, "vip")


def test_a_known_customer_without_history_counts_as_new():
    assert "new_or_unknown_caller" in call_priority(caller(known=True), "").reasons
