"""The extended event vocabulary (search, cart abandoned, checkout, store visit, login, ledger entries, order-line
attributes): validation on the way in and the incremental traits each one feeds."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from libs.errors import InvalidArgument
from services.profile.domain import AcceptedEvent, Event, ProfileState, validate_event
from services.profile.domain import events as ev
from services.profile.domain.events import summarize
from services.profile.domain.state import FAVOURITES_LIMIT, RECENT_SEARCHES_LIMIT

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
_ids = itertools.count()


def at(days: float = 0, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


def fold(*items: tuple[ev.Payload, datetime], state: ProfileState | None = None) -> ProfileState:
    state = state or ProfileState()
    for payload, when in items:
        state.apply(AcceptedEvent(f"e-{next(_ids)}", "c-1", when, "test", payload), NOW)
    return state


def roundtrip(state: ProfileState) -> ProfileState:
    """Through JSON as the real column does."""
    return ProfileState.from_document(orjson.loads(orjson.dumps(state.to_document())))


def order(total: float, channel: str = "web", **attributes: str) -> ev.Purchase:
    return ev.Purchase("o", (ev.OrderLine("SKU-1", 1, total, 0.0, **attributes),), 0.0, False, channel, "")


def rejected_field(payload: ev.Payload) -> str:
    with pytest.raises(InvalidArgument) as error:
        validate_event(Event("e-1", "c-1", (), NOW, "test", payload), NOW)
    return error.value.field


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (ev.Search("  ", 3), "search.query"),
        (ev.Search("boots", -1), "search.results"),
        (ev.CartAbandoned(-1.0, 2), "cart_abandoned.cart_value"),
        (ev.CartAbandoned(10.0, -2), "cart_abandoned.items"),
        (ev.Checkout(float("nan"), 1, "web"), "checkout.cart_value"),
        (ev.StoreVisit("", 60.0), "store_visit.store_id"),
        (ev.StoreVisit("s-1", -1.0), "store_visit.duration"),
        (ev.LedgerEntry("", 10.0, ""), "ledger_entry.type"),
        (ev.LedgerEntry("#7", 10.0, ""), "ledger_entry.type"),
        (ev.LedgerEntry("refund", 0.0, ""), "ledger_entry.amount"),
        (ev.LedgerEntry("write_off", -5.0, ""), "ledger_entry.amount"),
    ],
)
def test_malformed_new_payloads_are_rejected_naming_the_field(payload, field):
    assert rejected_field(payload) == field


@pytest.mark.parametrize(
    "payload",
    [
        ev.Search("boots", 0),
        ev.CartAbandoned(0.0, 0),
        ev.Checkout(99.5, 3, ""),
        ev.StoreVisit("s-1", 0.0),
        ev.Login(""),
        ev.LedgerEntry("refund", 5.0, "o-1"),
        ev.LedgerEntry("write_off", 5.0, ""),
    ],
)
def test_well_formed_new_payloads_pass_and_have_a_summary(payload):
    validate_event(Event("e-1", "c-1", (), NOW, "test", payload), NOW)
    assert summarize(payload)


def test_spend_and_orders_over_windows_count_only_orders_inside_each_window():
    state = fold(
        (order(10.0), at(days=5)),
        (order(20.0), at(days=60)),
        (order(40.0), at(days=200)),
        (order(80.0), at(days=400)),  # outside every window, still in the lifetime total
    )
    traits = roundtrip(state).traits(NOW)
    assert (traits.spend_30d, traits.spend_90d, traits.spend_365d) == (10.0, 30.0, 70.0)
    assert (traits.orders_30d, traits.orders_90d, traits.orders_365d) == (1, 2, 3)
    assert (traits.total_spend, traits.order_count) == (150.0, 4)
    # The windows move with time: 30 days later the 5-day-old order has left the 30-day window.
    later = state.traits(NOW + timedelta(days=30))
    assert (later.spend_30d, later.orders_30d) == (0.0, 0)


def test_windows_are_the_same_whatever_the_arrival_order():
    items = [(order(10.0), at(days=5)), (order(20.0), at(days=60)), (order(40.0), at(days=200))]
    forward = fold(*items).traits(NOW)
    backward = fold(*reversed(items)).traits(NOW)
    assert forward == backward


def test_return_rate_by_count_is_returned_units_over_bought_units():
    bought = ev.Purchase("o", (ev.OrderLine("A", 3, 10.0, 0.0), ev.OrderLine("B", 1, 10.0, 0.0)), 0.0, False, "", "")
    returned = ev.ProductReturn("o", (ev.ReturnLine("A", 2, 20.0),), "mail", "size")
    traits = fold((bought, at(days=3)), (returned, at(days=1))).traits(NOW)
    assert traits.return_rate_by_count == pytest.approx(0.5)
    assert traits.return_rate == pytest.approx(0.5)  # by value: 20 of 40


def test_favourites_rank_by_units_and_preferred_channel_by_orders():
    state = fold(
        (order(10.0, "web", category="shoes", brand="acme", size="42", colour="red"), at(days=3)),
        (order(10.0, "pos", category="shoes", brand="zeta", size="42", colour="blue"), at(days=2)),
        (order(10.0, "pos", category="bags", brand="zeta", colour="blue"), at(days=1)),
    )
    traits = roundtrip(state).traits(NOW)
    assert traits.favourite_categories == ("shoes", "bags")
    assert traits.favourite_brands == ("zeta", "acme")
    assert traits.favourite_sizes == ("42",)  # an unknown size is not counted
    assert traits.favourite_colours == ("blue", "red")
    assert traits.preferred_channel == "pos"


def test_favourites_counters_stay_bounded():
    state = fold(*((order(1.0, category=f"cat-{i}"), at(days=1)) for i in range(FAVOURITES_LIMIT + 20)))
    assert len(state.categories) == FAVOURITES_LIMIT


def test_searches_keep_the_newest_queries_by_event_time():
    queries = [(ev.Search(f"q{i}", 1), at(hours=10 - i)) for i in range(RECENT_SEARCHES_LIMIT + 2)]
    state = fold(*reversed(queries))  # arrival order reversed: event time decides
    traits = roundtrip(state).traits(NOW)
    assert traits.searches == RECENT_SEARCHES_LIMIT + 2
    assert traits.recent_searches == ("q6", "q5", "q4", "q3", "q2")


def test_store_visits_logins_abandonment_and_checkouts_are_counted_and_the_latest_kept():
    state = fold(
        (ev.StoreVisit("s-new", 600.0), at(days=1)),
        (ev.StoreVisit("s-old", 60.0), at(days=9)),  # late, older: does not replace the latest store
        (ev.Login("web"), at(hours=2)),
        (ev.Login("web"), at(days=4)),
        (ev.CartAbandoned(50.0, 2), at(days=1)),
        (ev.Checkout(50.0, 2, "web"), at(hours=1)),
    )
    traits = roundtrip(state).traits(NOW)
    assert (traits.store_visits, traits.last_store_id) == (2, "s-new")
    assert (traits.logins, traits.last_login_at) == (2, at(hours=2))
    assert (traits.cart_abandonments, traits.checkouts) == (1, 1)


def test_ledger_refunds_and_write_offs_lower_net_value_not_spend():
    state = fold(
        (order(200.0), at(days=10)),
        (ev.ProductReturn("o", (ev.ReturnLine("SKU-1", 1, 30.0),), "store", ""), at(days=5)),
        (ev.LedgerEntry("refund", 20.0, "o"), at(days=4)),
        (ev.LedgerEntry("write_off", 50.0, ""), at(days=3)),
    )
    traits = roundtrip(state).traits(NOW)
    assert traits.total_spend == 200.0
    assert (traits.ledger_refunds, traits.write_offs) == (20.0, 50.0)
    assert traits.net_value == pytest.approx(200.0 - 30.0 - 20.0 - 50.0)


def test_purchase_intent_rises_with_recent_views_dwell_repeats_and_cart_and_fades_after_a_day():
    assert ProfileState().traits(NOW).purchase_intent == 0.0
    views = [(ev.ProductView("SKU-1", 150.0), at(hours=h)) for h in (1, 2, 3)]
    views += [(ev.ProductView("SKU-2", 10.0), at(hours=h)) for h in (4, 5)]
    browsing = fold(*views)
    # 5 views (0.3) + 150s dwell (0.2) + repeated SKUs (0.2), no cart.
    assert browsing.traits(NOW).purchase_intent == pytest.approx(0.7)
    fold((ev.CartChange("add", "SKU-1", 1, 10.0), at(hours=1)), state=browsing)
    assert roundtrip(browsing).traits(NOW).purchase_intent == pytest.approx(1.0)
    assert browsing.traits(NOW + timedelta(days=2)).purchase_intent == 0.0


def test_many_different_skus_viewed_once_each_are_no_repeated_views():
    # More SKUs than last_viewed keeps: the view count exceeds the SKUs it holds without any SKU seen twice.
    eleven = fold(*[(ev.ProductView(f"SKU-{n}", 1.0), at(hours=(n + 1) / 60)) for n in range(11)])
    assert eleven.traits(NOW).purchase_intent == pytest.approx(0.3 + 0.2 * 1 / 120, abs=1e-6)
    # One SKU viewed twice in the window is; a view before the window does not count.
    twice = fold(*[(ev.ProductView("SKU-3", 1.0), at(hours=h)) for h in (30, 2, 1)])
    assert twice.traits(NOW).purchase_intent == pytest.approx(0.3 * 2 / 5 + 0.2 * 1 / 120 + 0.2, abs=1e-6)
    once = fold(*[(ev.ProductView("SKU-3", 1.0), at(hours=h)) for h in (30, 2)])
    assert once.traits(NOW).purchase_intent == pytest.approx(0.3 * 1 / 5 + 0.2 * 1 / 120, abs=1e-6)


def test_a_document_written_before_the_new_traits_reads_as_defaults():
    traits = ProfileState.from_document({"total_spend": 10.0, "order_count": 1}).traits(NOW)
    assert (traits.spend_365d, traits.searches, traits.favourite_categories, traits.write_offs) == (0.0, 0, (), 0.0)
