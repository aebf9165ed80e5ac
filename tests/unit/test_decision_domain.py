"""The decision's pure domain: validation, eligibility and consent, stock and pre-orders, arbitration, the trace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.errors import InvalidArgument
from services.decision.catalogue import Catalogue, CatalogueError, parse_catalogue
from services.decision.domain.arbitration import ArbitrationPolicy, arbitrate, context_weight
from services.decision.domain.eligibility import screen
from services.decision.domain.experience import web_prefill
from services.decision.domain.model import (
    Candidate,
    CartLine,
    Context,
    CustomerRef,
    CustomerView,
    DecideInput,
    OutcomeInput,
    StockLevel,
    StockView,
    Traits,
)
from services.decision.domain.pipeline import Scores, conclude
from services.decision.domain.stock import products_to_check, stock_verdict
from services.decision.domain.validation import validate_decide, validate_outcome

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PRODUCTS = [
    {
        "product_id": "P-SHOE",
        "name": "Trail Shoe",
        "category": "shoes",
        "price": 120.0,
        "variants": [
            {"sku": "SHOE-40-BLK", "size": "40", "colour": "black"},
            {"sku": "SHOE-42-BLK", "size": "42", "colour": "black"},
            {"sku": "SHOE-42-RED", "size": "42", "colour": "red"},
        ],
    },
    {
        "product_id": "P-BOOT",
        "name": "Hiking Boot",
        "category": "shoes",
        "price": 150.0,
        "variants": [{"sku": "BOOT-42-BRN", "size": "42", "colour": "brown"}],
    },
    {
        "product_id": "P-SOCK",
        "name": "Wool Sock",
        "category": "accessories",
        "price": 15.0,
        "variants": [{"sku": "SOCK-M-GRY", "size": "M", "colour": "grey"}],
    },
]


def offer(offer_id: str, **fields) -> dict:
    return {
        "id": offer_id,
        "name": offer_id.title(),
        "type": "discount",
        "channels": ["web", "pos", "call_center"],
        "value": 10.0,
        "lever": 1.0,
        "base_propensity": 0.1,
        **fields,
    }


def catalogue(*offers: dict) -> Catalogue:
    return parse_catalogue({"version": "t1", "offers": list(offers)}, {"products": PRODUCTS})


def customer(consent_channels=("web", "pos", "call_center"), consents_known=True, **traits) -> CustomerView:
    consents = frozenset(("marketing", c) for c in consent_channels) if consents_known else None
    return CustomerView(customer_id="c-1", known=True, traits=Traits(**traits), consents=consents)


def stock(*levels: tuple[str, str, int]) -> StockView:
    cat = catalogue()
    kinds = {"DC1": "warehouse"}
    return StockView(
        StockLevel(sku, cat.product_of_sku[sku], loc, kinds.get(loc, "store"), units) for sku, loc, units in levels
    )


# --- validation -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (DecideInput("unspecified", CustomerRef("c-1"), Context()), "channel"),
        (DecideInput("email", CustomerRef("c-1"), Context()), "channel"),
        (DecideInput("web", CustomerRef(), Context()), "customer"),
        (DecideInput("web", CustomerRef("c-1"), Context(), max_offers=21), "max_offers"),
        (DecideInput("web", CustomerRef("c-1"), Context(), max_offers=-1), "max_offers"),
        (DecideInput("pos", CustomerRef("c-1"), Context()), "context.store_id"),
        (DecideInput("web", CustomerRef("c-1"), Context(placement="Home Hero")), "context.placement"),
    ],
)
def test_decide_validation_names_the_field(request_, field):
    with pytest.raises(InvalidArgument) as error:
        validate_decide(request_)
    assert error.value.field == field


def test_a_valid_decide_request_passes_with_identifiers_only():
    validate_decide(DecideInput("pos", CustomerRef(identifiers=((3, "LC-1"),)), Context(store_id="S1"), 20))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"outcome_id": ""}, "outcome_id"),
        ({"decision_id": ""}, "decision_id"),
        ({"offer_id": ""}, "offer_id"),
        ({"type": "unspecified"}, "type"),
        ({"revenue": -1.0}, "revenue"),
        ({"revenue": float("nan")}, "revenue"),
    ],
)
def test_outcome_validation_names_the_field(changes, field):
    values = {"outcome_id": "o-1", "decision_id": "d-1", "offer_id": "x", "type": "accept", "occurred_at": None,
              "revenue": 0.0}
    with pytest.raises(InvalidArgument) as error:
        validate_outcome(OutcomeInput(**{**values, **changes}))
    assert error.value.field == field


# --- eligibility and consent ------------------------------------------------------------------------------------

def test_each_rule_removes_the_offers_that_fail_it_with_its_reason():
    cat = catalogue(
        offer("web-only", channels=["web"]),
        offer("future", valid_from="2025-07-01T00:00:00+00:00"),
        offer("past", valid_to="2025-05-01T00:00:00+00:00"),
        offer("gold", eligibility={"min_tier": "gold"}),
        offer("spender", eligibility={"min_total_spend": 500}),
        offer("regular", eligibility={"min_orders": 3}),
        offer("low-returns", eligibility={"max_return_rate": 0.2}),
        offer("cart-page", eligibility={"pages": ["cart"]}),
        offer("complaints", eligibility={"call_reasons": ["complaint"]}),
        offer("with-cart", eligibility={"requires_cart": True}),
        offer("shipping-payer", eligibility={"min_shipping_paid_share": 0.5}),
        offer("silver", eligibility={"min_tier": "silver", "min_orders": 2}),
    )
    who = customer(loyalty_tier="silver", total_spend=300, order_count=2, return_rate=0.4)
    result = screen(cat, "call_center", Context(call_reason="order_status"), who, NOW)
    assert result.removed == {
        "web-only": "channel",
        "future": "not_yet_valid",
        "past": "expired",
        "gold": "min_tier",
        "spender": "min_total_spend",
        "regular": "min_orders",
        "low-returns": "max_return_rate",
        "complaints": "call_reason",
        "with-cart": "requires_cart",
        "shipping-payer": "min_shipping_paid_share",
    }
    # Page rules are about web pages: they do not restrict the call centre.
    assert [o.id for o in result.eligible] == ["cart-page", "silver"]


def test_page_rule_applies_on_the_web_and_a_cart_satisfies_requires_cart():
    cat = catalogue(offer("cart-page", eligibility={"pages": ["cart"], "requires_cart": True}))
    on_home = screen(cat, "web", Context(page="home", cart=(CartLine("SOCK-M-GRY", 1, 15.0),)), customer(), NOW)
    on_cart = screen(cat, "web", Context(page="cart", cart=(CartLine("SOCK-M-GRY", 1, 15.0),)), customer(), NOW)
    assert on_home.removed == {"cart-page": "page"}
    assert [o.id for o in on_cart.eligible] == ["cart-page"]


def test_an_offer_listing_placements_shows_only_there_and_an_unplaced_request_sees_it():
    cat = catalogue(offer("checkout-only", placements=["checkout", "cart"]), offer("anywhere"))
    at_home = screen(cat, "web", Context(placement="home_hero"), customer(), NOW)
    at_checkout = screen(cat, "web", Context(placement="checkout"), customer(), NOW)
    unplaced = screen(cat, "web", Context(), customer(), NOW)
    assert at_home.removed == {"checkout-only": "placement"} and [o.id for o in at_home.eligible] == ["anywhere"]
    assert [o.id for o in at_checkout.eligible] == ["checkout-only", "anywhere"]
    assert [o.id for o in unplaced.eligible] == ["checkout-only", "anywhere"]


def test_marketing_offers_need_marketing_consent_for_the_request_channel():
    cat = catalogue(offer("promo"), offer("fix-order", type="service_action"))
    granted_for_pos_only = screen(cat, "web", Context(), customer(consent_channels=("pos",)), NOW)
    assert granted_for_pos_only.removed == {"promo": "no_marketing_consent"}
    assert [o.id for o in granted_for_pos_only.eligible] == ["fix-order"]  # service actions need no consent
    granted = screen(cat, "web", Context(), customer(consent_channels=("web",)), NOW)
    assert [o.id for o in granted.eligible] == ["promo", "fix-order"]


def test_unknown_consent_suppresses_marketing_fail_safe():
    cat = catalogue(offer("promo"), offer("fix-order", type="service_action"))
    result = screen(cat, "web", Context(), customer(consents_known=False), NOW)
    assert result.removed == {"promo": "consent_unknown"}
    assert [o.id for o in result.eligible] == ["fix-order"]


def test_cross_sell_of_a_product_already_in_the_cart_is_removed():
    cat = catalogue(offer("socks", type="cross_sell", product_id="P-SOCK"))
    in_request_cart = screen(cat, "web", Context(cart=(CartLine("SOCK-M-GRY", 1, 15.0),)), customer(), NOW)
    in_profile_cart = screen(cat, "web", Context(), customer(cart_skus=("SOCK-M-GRY",)), NOW)
    assert in_request_cart.removed == in_profile_cart.removed == {"socks": "already_in_cart"}


# --- stock and pre-orders ---------------------------------------------------------------------------------------

def test_an_offer_on_some_variants_needs_their_stock_and_prefills_only_them():
    cat = catalogue(offer("red-42", product_id="P-SHOE", skus=["SHOE-42-RED"]))
    red = cat.offers[0]
    assert [v.sku for v in cat.variants_of(red)] == ["SHOE-42-RED"]
    black_only = stock(("SHOE-42-BLK", "DC1", 5), ("SHOE-42-RED", "DC1", 0))
    assert stock_verdict(red, black_only, "DC1", Context(), cat) == (False, "out_of_stock")  # the product is not
    both = stock(("SHOE-42-BLK", "DC1", 5), ("SHOE-42-RED", "DC1", 1))
    assert stock_verdict(red, both, "DC1", Context(), cat) == (True, "in_stock")
    prefill = web_prefill(red, Context(), customer(), cat, both, "DC1")
    assert prefill is not None and prefill.sku == "SHOE-42-RED"  # never the black one, though in stock and first


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"skus": ["SHOE-42-RED"]}, r"offers\[0\].skus: needs the offer's product_id"),
        ({"product_id": "P-SHOE", "skus": ["BOOT-42-BRN"]}, r"'BOOT-42-BRN' is not a variant of product 'P-SHOE'"),
        ({"product_id": "P-SHOE", "skus": "SHOE-42-RED"}, r"offers\[0\].skus: expected a list"),
    ],
)
def test_offer_variants_are_checked_on_load(fields, problem):
    with pytest.raises(CatalogueError, match=problem):
        catalogue(offer("x", **fields))


def test_product_offers_need_stock_at_the_fulfilling_location():
    cat = catalogue()
    shoe_offer = catalogue(offer("shoe", product_id="P-SHOE")).offers[0]
    warehouse_only = stock(("SHOE-42-BLK", "DC1", 3))
    assert stock_verdict(shoe_offer, warehouse_only, "DC1", Context(), cat) == (True, "in_stock")
    assert stock_verdict(shoe_offer, warehouse_only, "S1", Context(), cat) == (False, "out_of_stock")
    assert stock_verdict(shoe_offer, stock(("SHOE-42-BLK", "DC1", 0)), "DC1", Context(), cat) == (False, "out_of_stock")
    assert stock_verdict(shoe_offer, None, "DC1", Context(), cat) == (False, "stock_unknown")
    no_product = catalogue(offer("ship", type="free_shipping")).offers[0]
    assert stock_verdict(no_product, None, "DC1", Context(), cat) == (True, "")


def test_pre_order_only_when_the_product_or_the_viewed_variant_is_sold_out():
    cat = catalogue()
    pre = catalogue(offer("pre", type="pre_order", product_id="P-SHOE")).offers[0]
    some_in_stock = stock(("SHOE-40-BLK", "DC1", 2), ("SHOE-42-RED", "DC1", 0))
    assert stock_verdict(pre, some_in_stock, "DC1", Context(), cat) == (False, "in_stock_no_pre_order")
    assert stock_verdict(pre, stock(("SHOE-40-BLK", "DC1", 0)), "DC1", Context(), cat) == (True, "pre_order_sold_out")
    # The customer looks at the sold-out red 42 while black 40 is in stock: the red 42 becomes a pre-order.
    assert stock_verdict(pre, some_in_stock, "DC1", Context(sku="SHOE-42-RED"), cat) == (True, "pre_order_sold_out")
    assert stock_verdict(pre, None, "DC1", Context(), cat) == (False, "stock_unknown")


def test_products_to_check_include_the_viewed_product_and_at_pos_its_category():
    cat = catalogue(offer("socks", product_id="P-SOCK"), offer("ship", type="free_shipping"))
    assert products_to_check(cat.offers, "web", Context(sku="SHOE-42-BLK"), cat) == ["P-SOCK", "P-SHOE"]
    assert products_to_check(cat.offers, "pos", Context(sku="SHOE-42-BLK"), cat) == ["P-SOCK", "P-SHOE", "P-BOOT"]
    assert products_to_check([], "web", Context(), cat) == []


# --- arbitration ------------------------------------------------------------------------------------------------

def _candidates(cat: Catalogue, propensities: dict[str, float]) -> list[Candidate]:
    return [Candidate(o, propensities[o.id], "model_propensity") for o in cat.offers]


def test_score_is_propensity_times_value_times_lever_and_ranks_best_first():
    cat = catalogue(
        offer("a", value=10.0, lever=1.0, allow_same_type=True),  # 0.5 x 10 x 1 = 5
        offer("b", value=40.0, lever=1.0, allow_same_type=True),  # 0.2 x 40 x 1 = 8
        offer("c", value=10.0, lever=0.5, allow_same_type=True),  # 0.9 x 10 x 0.5 = 4.5
    )
    result = arbitrate(_candidates(cat, {"a": 0.5, "b": 0.2, "c": 0.9}), Context(), customer(), frozenset(), cat,
                       ArbitrationPolicy(), max_offers=3)
    assert [(s.candidate.offer.id, s.score) for s in result.ranked] == [
        ("b", pytest.approx(8.0)), ("a", pytest.approx(5.0)), ("c", pytest.approx(4.5))
    ]


@pytest.mark.parametrize(
    ("offer_fields", "ctx", "traits", "in_cart", "expected"),
    [
        ({"product_id": "P-SHOE"}, Context(sku="SHOE-40-BLK", dwell_seconds=45), {}, set(), (1.5, ("long_dwell",))),
        ({"product_id": "P-SHOE"}, Context(sku="SHOE-40-BLK", dwell_seconds=10), {}, set(), (1.0, ())),
        ({"product_id": "P-SHOE"}, Context(sku="BOOT-42-BRN", dwell_seconds=45), {}, set(), (1.0, ())),
        ({"type": "free_shipping"}, Context(), {"shipping_paid_share": 0.6}, set(), (1.3, ("pays_for_shipping",))),
        ({"type": "free_shipping"}, Context(), {"shipping_paid_share": 0.4}, set(), (1.0, ())),
        ({"product_id": "P-SOCK"}, Context(), {}, {"P-SOCK"}, (1.2, ("cart_match",))),
        ({}, Context(), {"full_price_share": 0.9}, set(), (0.7, ("pays_full_price",))),
        (
            {"product_id": "P-SHOE", "type": "loyalty_perk"},
            Context(sku="SHOE-40-BLK", dwell_seconds=30),
            {},
            {"P-SHOE"},
            (pytest.approx(1.8), ("long_dwell", "cart_match")),
        ),
    ],
)
def test_context_weight_factors(offer_fields, ctx, traits, in_cart, expected):
    cat = catalogue(offer("x", **offer_fields))
    weight = context_weight(cat.offers[0], ctx, customer(**traits), frozenset(in_cart), cat, ArbitrationPolicy())
    assert weight == expected


def test_one_offer_per_product_min_priority_and_max_offers():
    cat = catalogue(
        offer("shoe-10", product_id="P-SHOE", value=10.0),
        offer("shoe-20", product_id="P-SHOE", value=20.0),
        offer("sock", product_id="P-SOCK", value=5.0, allow_same_type=True),
        offer("perk", type="loyalty_perk", value=1.0),
        offer("tiny", type="loyalty_perk", value=0.1),
    )
    props = {"shoe-10": 0.5, "shoe-20": 0.5, "sock": 0.5, "perk": 0.5, "tiny": 0.5}
    result = arbitrate(_candidates(cat, props), Context(), customer(), frozenset(), cat,
                       ArbitrationPolicy(min_priority=0.1), max_offers=2)
    assert [s.candidate.offer.id for s in result.ranked] == ["shoe-20", "sock"]
    assert result.dropped == {"shoe-10": "diversity", "perk": "beyond_max_offers", "tiny": "below_min_priority"}


def test_conclude_uses_model_scores_else_priors_and_traces_every_offer():
    cat = catalogue(
        offer("shoe", product_id="P-SHOE", value=50.0),
        offer("sock", product_id="P-SOCK", value=5.0),
        offer("ship", type="free_shipping", value=8.0, base_propensity=0.3),
        offer("pos-only", channels=["pos"]),
    )
    who = customer()
    screening = screen(cat, "web", Context(), who, NOW)
    levels = stock(("SHOE-42-BLK", "DC1", 4), ("SOCK-M-GRY", "DC1", 0))
    common = dict(catalogue=cat, channel="web", ctx=Context(), customer=who, screening=screening, stock=levels,
                  warehouse_id="DC1", policy=ArbitrationPolicy(), max_offers=3)

    scored = conclude(scores=Scores("m-7", {"shoe": 0.2, "ship": 0.5}), **common)
    assert [(o.offer_id, o.reason_codes) for o in scored.offers] == [
        ("shoe", ("model_propensity", "in_stock", "consented")),
        ("ship", ("model_propensity", "consented")),
    ]
    trace = {entry["offer_id"]: entry for entry in scored.trace["considered"]}
    assert trace["pos-only"] == {"offer_id": "pos-only", "removed": "channel"}
    assert trace["sock"] == {"offer_id": "sock", "removed": "out_of_stock"}
    assert trace["shoe"]["rank"] == 1 and trace["shoe"]["score"] == pytest.approx(10.0)
    assert trace["ship"]["source"] == "model_propensity" and trace["ship"]["factors"] == []

    rules = conclude(scores=None, **common)
    # Without a model the catalogue priors rank: shoe 0.1 x 50 = 5 ahead of ship 0.3 x 8 = 2.4.
    assert [(o.offer_id, o.propensity, o.reason_codes[0]) for o in rules.offers] == [
        ("shoe", 0.1, "rule_propensity"),
        ("ship", 0.3, "rule_propensity"),
    ]


def test_nothing_clearing_the_minimum_gives_no_offers_and_says_why():
    cat = catalogue(offer("ship", type="free_shipping", value=1.0))
    who = customer()
    result = conclude(catalogue=cat, channel="web", ctx=Context(), customer=who,
                      screening=screen(cat, "web", Context(), who, NOW), scores=None, stock=stock(),
                      warehouse_id="DC1", policy=ArbitrationPolicy(min_priority=5.0), max_offers=3)
    assert result.offers == ()
    assert result.trace["no_offer_reason"] == result.no_offer_reason == "below_min_priority"
    assert result.trace["considered"][0]["dropped"] == "below_min_priority"


def test_stale_offer_window_uses_the_decision_time():
    cat = catalogue(offer("summer", valid_from="2025-05-01T00:00:00+00:00", valid_to="2025-06-01T12:00:00+00:00"))
    assert screen(cat, "web", Context(), customer(), NOW - timedelta(seconds=1)).removed == {}
    assert screen(cat, "web", Context(), customer(), NOW).removed == {"summer": "expired"}
