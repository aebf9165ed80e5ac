"""The demo retailer generator: deterministic, a catalogue the decision service accepts, realistic customers."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import UTC, datetime

import phonenumbers
import pytest

from cli.demo.retailer import LOCATIONS, STORE_IDS, WAREHOUSE_ID, generate
from services.decision.catalogue import CHANNELS, OFFER_TYPES, parse_catalogue

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def retailer():
    return generate(300, seed=11, now=NOW)


@pytest.fixture(scope="module")
def histories(retailer):
    return {c.index: retailer.events(c) for c in retailer.customers}


def test_same_seed_same_retailer_and_histories(retailer, histories):
    again = generate(300, seed=11, now=NOW)
    assert again == retailer
    for customer in again.customers[:50]:
        assert [e.SerializeToString() for e in again.events(customer)] == [
            e.SerializeToString() for e in histories[customer.index]
        ]


def test_another_seed_another_retailer(retailer):
    other = generate(300, seed=12, now=NOW)
    assert other.offers_doc() != retailer.offers_doc()
    assert other.stock != retailer.stock
    assert [c.email for c in other.customers] != [c.email for c in retailer.customers]


def test_a_history_does_not_depend_on_the_population_size(retailer, histories):
    small = generate(20, seed=11, now=NOW)
    assert small.customers == retailer.customers[:20]
    assert [e.SerializeToString() for e in small.events(small.customers[7])] == [
        e.SerializeToString() for e in histories[7]
    ]


def test_catalogue_passes_the_decision_services_parser(retailer):
    catalogue = parse_catalogue(retailer.offers_doc(), retailer.products_doc())
    assert 90 <= len(catalogue.products) <= 110
    assert 450 <= len(catalogue.product_of_sku) <= 650
    assert all(re.fullmatch(r"P\d{4}-[A-Z]{3}-[A-Z0-9]+", sku) for sku in catalogue.product_of_sku)
    assert {p.category for p in catalogue.products.values()} >= {"shoes", "tops", "jeans", "dresses", "outerwear",
                                                                  "accessories"}
    assert catalogue.version.startswith("demo-seed11-20250301+")


def test_offers_cover_every_type_and_channel(retailer):
    catalogue = parse_catalogue(retailer.offers_doc(), retailer.products_doc())
    offers = catalogue.offers
    assert 35 <= len(offers) <= 45
    assert {o.type for o in offers} == set(OFFER_TYPES)
    for channel in CHANNELS:
        assert {o.type for o in offers if channel in o.channels} >= {"discount", "free_shipping", "loyalty_perk",
                                                                      "service_action"}, channel
    assert all(0.0 < o.base_propensity < 0.5 and o.value > 0 for o in offers)
    assert all(o.discount_pct > 0 for o in offers if o.type == "discount")
    assert all(o.product_id for o in offers if o.type in ("pre_order", "cross_sell"))
    # POS and call-centre offers come with what the associate or agent says.
    assert all(o.script for o in offers if set(o.channels) & {"pos", "call_center"})
    rules = [o.eligibility for o in offers]
    assert any(r.min_tier != "none" for r in rules)
    assert any(r.min_total_spend > 0 for r in rules)
    assert any(r.pages for r in rules)
    assert any(r.call_reasons for r in rules)
    assert any(r.requires_cart for r in rules)
    assert any(r.min_shipping_paid_share > 0 for r in rules)
    assert not any(o.marketing for o in offers if o.type == "service_action")


def test_stock_has_realistic_gaps(retailer):
    skus = {sku for p in retailer.products for sku in (v.sku for v in p.variants)}
    stock = {(r.sku, r.location_id): r.on_hand for r in retailer.stock}
    assert set(stock) == {(sku, loc.location_id) for sku in skus for loc in LOCATIONS}
    assert all(quantity >= 0 for quantity in stock.values())
    warehouse_in_stock = sum(stock[(sku, WAREHOUSE_ID)] > 0 for sku in skus) / len(skus)
    store_in_stock = sum(stock[(sku, s)] > 0 for sku in skus for s in STORE_IDS) / (len(skus) * len(STORE_IDS))
    assert 0.8 < warehouse_in_stock < 1.0  # the warehouse has most things, not everything
    assert 0.5 < store_in_stock < warehouse_in_stock
    viral = [p for p in retailer.products if p.viral]
    assert len(viral) == 3
    assert all(stock[(v.sku, loc.location_id)] <= 3 for p in viral for v in p.variants for loc in LOCATIONS)


def test_pre_orders_are_for_products_sold_out_at_the_warehouse_in_some_variants(retailer):
    stock = {(r.sku, r.location_id): r.on_hand for r in retailer.stock}
    products = {p.product_id: p for p in retailer.products}
    pre_ordered = [products[o["product_id"]] for o in retailer.offers if o["type"] == "pre_order"]
    regular = [p for p in pre_ordered if not p.viral]
    assert len(regular) >= 2 and len(regular) < len(pre_ordered)  # viral items get pre-orders too
    for product in regular:
        assert 0 in [stock[(v.sku, WAREHOUSE_ID)] for v in product.variants], product.product_id


def test_showcase_sku_is_sold_out_at_s1_only(retailer):
    showcase = retailer.showcase()
    sku = showcase["pos"]["sku"]
    stock = {r.location_id: r.on_hand for r in retailer.stock if r.sku == sku}
    assert stock["S1"] == 0
    assert stock[WAREHOUSE_ID] > 0 and any(stock[s] > 0 for s in STORE_IDS if s != "S1")
    assert showcase["web"]["email"] == retailer.customers[1].email
    assert showcase["pos"]["loyalty_card"] == retailer.customers[0].loyalty_card
    assert showcase["call_center"]["phone"] == retailer.customers[2].phone


def test_customers_have_valid_unique_identifiers(retailer):
    customers = retailer.customers
    phones = [c.phone for c in customers if c.phone]
    assert len(phones) > 0.75 * len(customers)
    assert all(phonenumbers.is_valid_number(phonenumbers.parse(phone)) for phone in phones)
    assert all(re.fullmatch(r"[a-z]+\.[a-z]+\d+@example\.com", c.email) for c in customers)
    cards = [c.loyalty_card for c in customers if c.loyalty_card]
    assert all(re.fullmatch(r"LC\d{8}", card) for card in cards)
    for values in (phones, cards, [c.email for c in customers], [c.cookie_id for c in customers]):
        assert len(set(values)) == len(values)
    assert all(c.identifiers() for c in customers)


def test_all_phones_are_valid_at_scale():
    customers = generate(10_000, seed=3, now=NOW).customers
    phones = [c.phone for c in customers if c.phone]
    assert len(set(phones)) == len(phones) > 8_000
    assert all(phonenumbers.is_valid_number(phonenumbers.parse(phone)) for phone in phones)


def test_personas_and_consents_are_mixed(retailer):
    personas = Counter(c.persona for c in retailer.customers)
    assert set(personas) == {"loyal_high_value", "bargain_hunter", "serial_returner", "new", "lapsed",
                             "shipping_payer", "regular"}
    web_marketing = [g.granted for c in retailer.customers for g in c.consents
                     if g.purpose == "marketing" and g.channel == "web"]
    assert len(web_marketing) == len(retailer.customers)
    assert 0.7 < sum(web_marketing) / len(web_marketing) < 0.97  # most say yes, a realistic minority no
    assert any(g.channel == "pos" for c in retailer.customers for g in c.consents)
    assert any(g.channel == "call_center" for c in retailer.customers for g in c.consents)


def test_histories_are_ordered_unique_and_in_the_past(retailer, histories):
    total = sum(len(events) for events in histories.values())
    assert 25 <= total / len(histories) <= 35
    now = int(NOW.timestamp())
    for index, events in histories.items():
        assert [e.event_id for e in events] == [f"demo-{index}-{n}" for n in range(len(events))]
        times = [e.occurred_at.seconds for e in events]
        assert times == sorted(times)
        assert times[-1] < now and times[0] > now - 200 * 86_400
        assert all(e.source and not e.customer_id and e.WhichOneof("payload") for e in events)
    kinds = Counter(e.WhichOneof("payload") for events in histories.values() for e in events)
    assert set(kinds) == {"page_view", "product_view", "cart_change", "purchase", "product_return",
                          "service_contact", "loyalty_change", "preference_update"}


def test_purchases_and_returns_are_consistent(retailer, histories):
    skus = {v.sku for p in retailer.products for v in p.variants}
    discounted = full_price = fees = free = 0
    methods: Counter = Counter()
    unresolved = 0
    for events in histories.values():
        bought: dict[str, set[str]] = defaultdict(set)
        for event in events:
            kind = event.WhichOneof("payload")
            if kind == "purchase":
                purchase = event.purchase
                assert purchase.lines and purchase.order_id not in bought
                for line in purchase.lines:
                    assert line.sku in skus and line.quantity >= 1
                    assert 0 < line.unit_price <= line.list_price
                    discounted += line.unit_price < line.list_price
                    full_price += line.unit_price == line.list_price
                    bought[purchase.order_id].add(line.sku)
                if purchase.shipped:
                    fees += purchase.shipping_fee > 0
                    free += purchase.shipping_fee == 0
                else:
                    assert purchase.shipping_fee == 0 and purchase.store_id in STORE_IDS
            elif kind == "product_return":
                returned = event.product_return
                assert returned.lines and returned.method and returned.reason
                assert {line.sku for line in returned.lines} <= bought[returned.order_id]  # an earlier order
                assert all(line.refund_amount > 0 for line in returned.lines)
                methods[returned.method] += 1
            elif kind == "product_view":
                assert event.product_view.sku in skus and event.product_view.dwell.seconds > 0
            elif kind == "service_contact":
                unresolved += not event.service_contact.resolved
    assert discounted and full_price and fees and free and unresolved
    assert len(methods) == 3


def test_showcase_customers_have_their_situations(retailer, histories):
    loyal, web, caller, new = (histories[i] for i in range(4))
    assert retailer.customers[0].tier == 4 and any(e.WhichOneof("payload") == "purchase" for e in loyal)
    sku = retailer.showcase()["web"]["sku"]
    last_cart = [e.cart_change for e in web if e.WhichOneof("payload") == "cart_change"][-1]
    assert (last_cart.action, last_cart.sku) == (1, sku)  # the shoe they looked at long is in their cart
    last_view = [e.product_view for e in web if e.WhichOneof("payload") == "product_view"][-1]
    assert last_view.sku == sku and last_view.dwell.seconds >= 60
    shoe_offer = next(o for o in retailer.offers if o["id"] == "WEB-SHOES-15")
    assert sku.startswith(shoe_offer["product_id"] + "-")
    complaints = [e.service_contact for e in caller if e.WhichOneof("payload") == "service_contact"]
    assert complaints[-1].reason == "complaint" and not complaints[-1].resolved
    assert retailer.customers[3].persona == "new"
    assert new[0].occurred_at.seconds > int(NOW.timestamp()) - 31 * 86_400


def test_loyalty_members_earn_redeem_and_move_up(retailer, histories):
    changes = [(c, e.loyalty_change) for c in retailer.customers for e in histories[c.index]
               if e.WhichOneof("payload") == "loyalty_change"]
    assert all(c.loyalty_card for c, _ in changes)  # no card, no loyalty events
    assert any(change.points_delta < 0 for _, change in changes)  # redemptions
    upgrades = [(c, change) for c, change in changes if change.points_delta == 0]
    assert upgrades and all(change.tier == c.tier for c, change in upgrades)
    for customer in retailer.customers:
        tiers = [e.loyalty_change.tier for e in histories[customer.index]
                 if e.WhichOneof("payload") == "loyalty_change" and e.loyalty_change.tier]
        assert tiers[-1] == customer.tier if customer.loyalty_card else not tiers
