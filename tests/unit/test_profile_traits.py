"""Incremental trait folding of the profile domain: every trait, out-of-order arrival, the cart, the features."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.profile.domain import FEATURE_NAMES, AcceptedEvent, ProfileState, compute_features
from services.profile.domain import events as ev
from services.profile.domain.events import summarize
from services.profile.domain.state import CART_LINES_LIMIT, CART_LOG_LIMIT, LAST_VIEWED_LIMIT

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
_ids = itertools.count()


def at(days: float = 0, minutes: float = 0) -> datetime:
    """A time `days` + `minutes` before NOW."""
    return NOW - timedelta(days=days, minutes=minutes)


def event(payload: ev.Payload, when: datetime) -> AcceptedEvent:
    return AcceptedEvent(f"e-{next(_ids)}", "c-1", when, "test", payload)


def fold(*events: AcceptedEvent, state: ProfileState | None = None) -> ProfileState:
    """Apply events in the given (arrival) order, one by one as separate batches would."""
    state = state or ProfileState()
    for e in events:
        state.apply(e, NOW)
    return state


def purchase(*lines: tuple[int, float, float], shipped: bool = False, fee: float = 0.0) -> ev.Purchase:
    return ev.Purchase(
        "o-1",
        tuple(ev.OrderLine(f"SKU-{i}", qty, unit, listed) for i, (qty, unit, listed) in enumerate(lines)),
        fee,
        shipped,
        "web",
        "",
    )


def product_return(refund: float, method: str = "mail") -> ev.ProductReturn:
    return ev.ProductReturn("o-1", (ev.ReturnLine("SKU-0", 1, refund),), method, "size")


def cart(action: str, sku: str = "", quantity: int = 0, price: float = 0.0) -> ev.CartChange:
    return ev.CartChange(action, sku, quantity, price)


def cart_view(state: ProfileState) -> list[tuple[str, int, float]]:
    return [(line.sku, line.quantity, line.unit_price) for line in state.traits(NOW).cart]


def test_purchases_fold_spend_orders_full_price_and_shipping_shares():
    state = fold(
        event(purchase((2, 10.0, 10.0), (1, 30.0, 40.0), shipped=True, fee=4.95), at(days=10)),
        event(purchase((1, 50.0, 0.0)), at(days=3, minutes=1)),  # list price unknown: full price
        event(purchase((1, 20.0, 25.0), shipped=True, fee=0.0), at(days=5)),
    )
    traits = state.traits(NOW)
    assert traits.total_spend == pytest.approx(120.0)  # line totals, shipping not included
    assert traits.order_count == 3
    assert traits.average_order_value == pytest.approx(40.0)
    assert traits.last_purchase_at == at(days=3, minutes=1)
    assert traits.days_since_last_purchase == 3
    assert traits.full_price_share == pytest.approx(3 / 5)  # 2 at list + 1 unknown, of 5 units
    assert traits.shipping_paid_share == pytest.approx(1 / 2)  # in-store order not counted
    assert traits.net_value == pytest.approx(120.0)


def test_a_customer_who_never_bought_has_neutral_purchase_traits():
    traits = fold(event(ev.PageView("home"), at(days=1))).traits(NOW)
    assert traits.days_since_last_purchase == -1
    assert traits.last_purchase_at is None
    assert traits.average_order_value == 0.0
    assert traits.full_price_share == 0.0 and traits.shipping_paid_share == 0.0
    assert traits.return_rate == 0.0 and traits.return_method_mix == {}
    assert traits.purchase_frequency == 0.0


def test_purchase_frequency_is_orders_per_30_days_since_first_seen_at_least_one_month():
    first = fold(event(ev.PageView("home"), at(days=5)), event(purchase((1, 10.0, 10.0)), at(days=1)))
    assert first.traits(NOW).purchase_frequency == 1.0  # five days in: one order is a month's worth, no more
    loyal = fold(
        event(purchase((1, 10.0, 10.0)), at(days=1)),
        event(purchase((1, 10.0, 10.0)), at(days=60)),
        event(ev.PageView("home"), at(days=90)),  # first seen 90 days ago, arriving last
        event(purchase((1, 10.0, 10.0)), at(days=30)),
    )
    assert loyal.traits(NOW).purchase_frequency == pytest.approx(1.0)  # 3 orders in 3 months
    assert loyal.traits(NOW + timedelta(days=90)).purchase_frequency == pytest.approx(0.5)  # and nothing since


def test_returns_fold_rate_method_mix_recent_count_and_net_value():
    state = fold(
        event(purchase((4, 50.0, 50.0)), at(days=60)),
        event(product_return(20.0, "store"), at(days=45)),  # outside the 30-day window
        event(product_return(15.0, "mail"), at(days=20)),
        event(product_return(15.0, "mail"), at(days=1)),
    )
    traits = state.traits(NOW)
    assert traits.return_count == 3
    assert traits.return_rate == pytest.approx(50.0 / 200.0)
    assert traits.return_method_mix == pytest.approx({"store": 1 / 3, "mail": 2 / 3, "courier": 0.0})
    assert traits.recent_returns == 2
    assert traits.net_value == pytest.approx(150.0)
    # Recent returns are computed at read time: 11 days later the return of 20 days ago has left the window.
    assert state.traits(NOW + timedelta(days=11)).recent_returns == 1


def test_net_spend_windows_deduct_refunds_and_write_offs_on_the_day_they_happened_in_any_arrival_order():
    events = [
        event(purchase((1, 100.0, 100.0)), at(days=40)),
        event(purchase((1, 50.0, 50.0)), at(days=10)),
        event(product_return(30.0), at(days=5)),  # reverses spend in every window it falls in
        event(ev.LedgerEntry("refund", 10.0, "o-1"), at(days=100)),
        event(ev.LedgerEntry("write_off", 5.0, "o-2"), at(days=2)),
        event(ev.LedgerEntry("refund", 99.0, "o-0"), at(days=400)),  # before the longest window: net_value only
    ]
    for order in (events, events[::-1]):
        traits = fold(*order).traits(NOW)
        assert (traits.spend_30d, traits.spend_90d, traits.spend_365d) == (50.0, 150.0, 150.0)  # gross
        assert traits.net_spend_30d == pytest.approx(50.0 - 30.0 - 5.0)
        assert traits.net_spend_90d == pytest.approx(150.0 - 35.0)
        assert traits.net_spend_365d == pytest.approx(150.0 - 45.0)
        assert traits.net_value == pytest.approx(150.0 - 144.0)
    # Read (from the stored document) 26 days later: of the 30-day window's entries only the write-off is left.
    state = ProfileState.from_document(orjson.loads(orjson.dumps(fold(*events).to_document())))
    assert state.traits(NOW + timedelta(days=26)).net_spend_30d == pytest.approx(-5.0)
    # A refund of an order placed before the window takes the window below zero.
    refunded = fold(event(purchase((1, 80.0, 80.0)), at(days=45)), event(product_return(80.0), at(days=3)))
    assert refunded.traits(NOW).net_spend_30d == pytest.approx(-80.0)


def test_return_rate_is_capped_when_refunds_exceed_the_recorded_spend():
    traits = fold(event(purchase((1, 10.0, 10.0)), at(days=2)), event(product_return(30.0), at(days=1))).traits(NOW)
    assert traits.return_rate == 1.0
    assert traits.net_value == pytest.approx(-20.0)


def test_loyalty_points_sum_and_the_tier_is_the_latest_by_event_time():
    state = fold(
        event(ev.LoyaltyChange(100, 3), at(days=1)),  # gold, newest
        event(ev.LoyaltyChange(50, 1), at(days=5)),  # bronze, older but arrives later: ignored for the tier
        event(ev.LoyaltyChange(-30, 0), at(minutes=5)),  # points only, tier kept
    )
    traits = state.traits(NOW)
    assert traits.loyalty_points == 120
    assert traits.loyalty_tier == 3


def test_service_contacts_count_and_a_later_resolved_contact_closes_an_open_issue():
    state = fold(
        event(ev.ServiceContact("complaint", False), at(days=3)),
        event(ev.ServiceContact("complaint", False), at(days=2)),
        event(ev.ServiceContact("order_status", True), at(days=2)),  # different reason: closes nothing
        event(ev.ServiceContact("complaint", True), at(days=1)),
    )
    traits = state.traits(NOW)
    assert traits.service_contacts == 4
    assert traits.open_service_issues == 1


def test_a_resolution_arriving_before_the_issue_it_resolves_still_closes_it():
    state = fold(
        event(ev.ServiceContact("complaint", True), at(days=1)),
        event(ev.ServiceContact("complaint", False), at(days=2)),  # older, arrives late: resolved already
        event(ev.ServiceContact("complaint", False), at(minutes=5)),  # after the resolution: stays open
    )
    assert state.traits(NOW).open_service_issues == 1
    # A resolution older than the issue does not close it.
    state = fold(
        event(ev.ServiceContact("delivery", False), at(days=1)),
        event(ev.ServiceContact("delivery", True), at(days=2)),
    )
    assert state.traits(NOW).open_service_issues == 1


def test_last_viewed_is_newest_first_deduplicated_by_sku_and_bounded():
    views = [event(ev.ProductView(f"SKU-{i}", float(i)), at(minutes=100 - i)) for i in range(12)]
    state = fold(*views)
    state = fold(
        event(ev.ProductView("SKU-5", 99.0), at(minutes=1)),  # newer view of a kept SKU moves it to the front
        event(ev.ProductView("SKU-11", 1.0), at(minutes=500)),  # older view of SKU-11 arriving late: ignored
        state=state,
    )
    viewed = state.traits(NOW).last_viewed
    assert len(viewed) == LAST_VIEWED_LIMIT
    assert [v.sku for v in viewed] == [f"SKU-{i}" for i in (5, 11, 10, 9, 8, 7, 6, 4, 3, 2)]
    assert viewed[0].dwell_seconds == 99.0 and viewed[1].dwell_seconds == 11.0
    assert [v.viewed_at for v in viewed] == sorted((v.viewed_at for v in viewed), reverse=True)


def test_cart_add_remove_clear_and_the_newest_add_price():
    state = fold(
        event(cart("add", "A", 2, 10.0), at(minutes=50)),
        event(cart("add", "B", 1, 5.0), at(minutes=40)),
        event(cart("add", "A", 1, 9.0), at(minutes=30)),
        event(cart("remove", "B", 3, 5.0), at(minutes=20)),  # more than in the cart: the line goes, never negative
    )
    assert cart_view(state) == [("A", 3, 9.0)]
    fold(event(cart("clear"), at(minutes=10)), state=state)
    assert cart_view(state) == []
    fold(event(cart("add", "C", 1, 7.0), at(minutes=5)), state=state)
    assert cart_view(state) == [("C", 1, 7.0)]


def test_a_purchase_clears_the_cart_and_changes_older_than_a_clear_are_ignored():
    state = fold(event(cart("add", "A", 1, 10.0), at(minutes=30)), event(purchase((1, 10.0, 10.0)), at(minutes=20)))
    assert cart_view(state) == []
    fold(event(cart("add", "B", 1, 4.0), at(minutes=25)), state=state)  # before the checkout, arrives late
    assert cart_view(state) == []
    fold(event(cart("add", "B", 1, 4.0), at(minutes=15)), state=state)
    assert cart_view(state) == [("B", 1, 4.0)]


def test_a_late_clear_drops_only_the_changes_before_it():
    state = fold(
        event(cart("add", "A", 1, 10.0), at(minutes=30)),
        event(cart("add", "B", 2, 5.0), at(minutes=10)),
        event(cart("clear"), at(minutes=20)),  # arrives last, happened between the two adds
    )
    assert cart_view(state) == [("B", 2, 5.0)]


def test_the_cart_is_the_same_whatever_order_the_changes_arrive_in():
    changes = [
        event(cart("add", "A", 2, 10.0), at(minutes=60)),
        event(cart("remove", "A", 1, 10.0), at(minutes=50)),
        event(cart("add", "B", 1, 3.0), at(minutes=45)),
        event(purchase((1, 10.0, 10.0)), at(minutes=40)),
        event(cart("add", "C", 2, 4.0), at(minutes=30)),
        event(cart("remove", "C", 1, 4.0), at(minutes=20)),
        event(cart("add", "A", 1, 11.0), at(minutes=10)),
    ]
    expected = cart_view(fold(*changes))
    assert expected == [("C", 1, 4.0), ("A", 1, 11.0)]
    for order in itertools.permutations(changes):
        assert cart_view(fold(*order)) == expected


def test_a_long_cart_log_is_compacted_without_changing_the_cart():
    state = ProfileState()
    for i in range(CART_LOG_LIMIT + 20):
        fold(event(cart("add" if i % 3 else "remove", f"S{i % 4}", 1, float(i % 4)), at(minutes=1000 - i)), state=state)
    # The expected cart: quantities replayed in time order, never below zero.
    quantities: dict[str, int] = {}
    for i in range(CART_LOG_LIMIT + 20):
        sku = f"S{i % 4}"
        quantities[sku] = max(0, quantities.get(sku, 0) + (1 if i % 3 else -1))
    assert len(state.cart_log) <= CART_LOG_LIMIT
    assert {sku: qty for sku, qty, _ in cart_view(state)} == {sku: q for sku, q in quantities.items() if q}


def test_a_cart_that_only_grows_keeps_its_most_recently_touched_lines():
    state = ProfileState()
    for i in range(CART_LOG_LIMIT * 3):  # a bot adding a new SKU forever
        fold(event(cart("add", f"S{i:04d}", 1, 1.0), at(minutes=1000 - i)), state=state)
    lines = [sku for sku, _, _ in cart_view(state)]
    assert CART_LINES_LIMIT <= len(lines) <= CART_LOG_LIMIT
    assert lines[-1] == f"S{CART_LOG_LIMIT * 3 - 1:04d}"  # the newest is kept
    assert "S0000" not in lines  # the oldest went


def test_preferences_latest_update_wins_per_field_and_empty_fields_keep_the_value():
    state = fold(
        event(ev.PreferenceUpdate(("M",), ("blue",), "express"), at(days=2)),
        event(ev.PreferenceUpdate(("L",), (), ""), at(days=1)),
        event(ev.PreferenceUpdate(("S",), ("red",), "standard"), at(days=3)),  # older, arrives late: ignored
    )
    prefs = state.traits(NOW).preferences
    assert prefs.sizes == ("L",)
    assert prefs.colours == ("blue",)
    assert prefs.shipping_method == "express"


def test_first_seen_is_the_earliest_event_time_even_when_it_arrives_late():
    state = fold(event(ev.PageView("home"), at(days=2)), event(ev.PageView("home"), at(days=40)))
    assert state.first_seen_at == at(days=40)
    assert compute_features(state, NOW)["tenure_days"] == 40.0


def test_features_have_the_fixed_names_in_order_and_are_floats():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 25
    features = compute_features(fold(event(ev.PageView("home"), at(days=1))), NOW)
    assert tuple(features) == FEATURE_NAMES
    assert all(type(value) is float for value in features.values())
    assert features["days_since_last_purchase"] == 9999.0  # never bought


def test_features_summarise_a_full_history():
    state = fold(
        event(purchase((2, 40.0, 50.0), (1, 20.0, 20.0), shipped=True, fee=5.0), at(days=30)),
        event(product_return(20.0, "courier"), at(days=10)),
        event(ev.LoyaltyChange(200, 4), at(days=9)),
        event(ev.ServiceContact("complaint", False), at(days=8)),
        event(ev.ProductView("SKU-1", 30.0), at(days=8)),  # outside the 7-day browsing window
        event(ev.ProductView("SKU-2", 42.0), at(days=2)),
        event(ev.ProductView("SKU-3", 12.5), at(days=1)),
        event(cart("add", "SKU-3", 2, 12.5), at(minutes=30)),
        event(ev.OfferResponse("d-1", "off-1", "impression"), at(days=1)),
        event(ev.OfferResponse("d-1", "off-1", "accept"), at(days=1)),
        event(ev.OfferResponse("d-2", "off-2", "impression"), at(days=1)),
        event(ev.OfferResponse("d-2", "off-2", "decline"), at(days=1)),
    )
    assert compute_features(state, NOW) == pytest.approx(
        {
            "total_spend": 100.0,
            "order_count": 1.0,
            "average_order_value": 100.0,
            "days_since_last_purchase": 30.0,
            "return_rate": 0.2,
            "return_count": 1.0,
            "recent_returns": 1.0,
            "return_share_store": 0.0,
            "return_share_mail": 0.0,
            "return_share_courier": 1.0,
            "full_price_share": 1 / 3,
            "shipping_paid_share": 1.0,
            "loyalty_tier": 4.0,
            "loyalty_points": 200.0,
            "open_service_issues": 1.0,
            "service_contacts": 1.0,
            "net_value": 80.0,
            "cart_value": 25.0,
            "cart_items": 2.0,
            "viewed_skus_7d": 2.0,
            "max_dwell_seconds_7d": 42.0,
            "offer_accepts": 1.0,
            "offer_declines": 1.0,
            "offer_impressions": 2.0,
            "tenure_days": 30.0,
        }
    )


def test_the_stored_document_round_trips_through_json():
    state = fold(
        event(purchase((1, 10.0, 12.0), shipped=True, fee=2.0), at(days=3)),
        event(product_return(5.0, "store"), at(days=2)),
        event(ev.LoyaltyChange(10, 2), at(days=2)),
        event(ev.ServiceContact("complaint", False), at(days=2)),
        event(ev.ServiceContact("billing", True), at(days=2)),
        event(ev.ProductView("SKU-1", 3.5), at(days=1)),
        event(cart("add", "SKU-1", 1, 10.0), at(minutes=5)),
        event(ev.PreferenceUpdate(("M",), ("red",), "express"), at(days=1)),
        event(ev.OfferResponse("d", "o", "click"), at(days=1)),
    )
    restored = ProfileState.from_document(orjson.loads(orjson.dumps(state.to_document())))  # as libs.db stores it
    assert restored == state
    # A document missing keys reads as defaults; without a fold version it was folded by an older release.
    assert ProfileState.from_document({}) == ProfileState(fold_version=0)


@pytest.mark.parametrize(
    ("payload", "summary"),
    [
        (purchase((2, 40.0, 40.0), (1, 4.5, 4.5)), "purchase 2 lines 84.50"),
        (ev.ProductView("SKU-1", 42.0), "viewed SKU-1 for 42s"),
        (ev.PageView("category/shoes"), "viewed page category/shoes"),
        (cart("add", "SKU-1", 2, 5.0), "cart add 2 x SKU-1"),
        (cart("clear"), "cart cleared"),
        (product_return(12.0, "store"), "return 1 line by store, refund 12.00"),
        (ev.ServiceContact("complaint", False), "service contact complaint (open)"),
        (ev.LoyaltyChange(120, 3), "loyalty +120 points, tier gold"),
        (ev.OfferResponse("d-1", "OFF-1", "accept"), "offer OFF-1 accept"),
        (ev.PreferenceUpdate(("M",), (), "express"), "preferences updated: sizes, shipping"),
    ],
)
def test_activity_summaries_are_short_and_readable(payload, summary):
    assert summarize(payload) == summary
