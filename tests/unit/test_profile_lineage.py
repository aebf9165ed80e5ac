"""The pure parts of following identity's lineage in the profile: stored payloads read back exactly, and the fold
that rebuilds a (merged or split) customer's state from its events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.profile.domain import events as ev
from services.profile.domain.events import AcceptedEvent, payload_from_document
from services.profile.domain.lineage import fold
from services.profile.domain.state import FOLD_VERSION, ProfileState

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)

ONE_OF_EACH = [
    ev.PageView("home"),
    ev.ProductView("SKU-1", 12.5),
    ev.CartChange("add", "SKU-1", 2, 9.99),
    ev.Purchase(
        "o-1",
        (ev.OrderLine("SKU-1", 2, 9.99, 12.0, "shoes", "acme", "42", "red"), ev.OrderLine("SKU-2", 1, 5.0, 0.0)),
        4.95,
        True,
        "web",
        "",
    ),
    ev.ProductReturn("o-1", (ev.ReturnLine("SKU-1", 1, 9.99),), "mail", "too small"),
    ev.ServiceContact("complaint", False),
    ev.LoyaltyChange(120, 3),
    ev.OfferResponse("d-1", "off-1", "accept"),
    ev.PreferenceUpdate(("M", "L"), ("blue",), "express"),
    ev.Search("red shoes", 14),
    ev.CartAbandoned(29.97, 3),
    ev.Checkout(29.97, 3, "web"),
    ev.StoreVisit("S1", 600.0),
    ev.Login("web"),
    ev.LedgerEntry("refund", 9.99, "o-1"),
    ev.ModelPrediction("lifetime_value", "lifetime-value-xgb", "20260301T120000Z", 412.5),
]


def test_every_payload_kind_covered_here():
    assert {payload.kind for payload in ONE_OF_EACH} == set(ev._PAYLOADS)


@pytest.mark.parametrize("payload", ONE_OF_EACH, ids=lambda payload: payload.kind)
def test_a_stored_payload_reads_back_equal(payload):
    stored = AcceptedEvent("e-1", "c-1", NOW, "test", payload).payload_document()
    through_json = orjson.loads(orjson.dumps(stored))  # as the JSON column gives it back
    assert payload_from_document(payload.kind, through_json) == payload


def test_a_document_from_before_a_field_existed_reads_with_the_default():
    line = {"sku": "SKU-1", "quantity": 1, "unit_price": 5.0, "list_price": 5.0}  # no category/brand/size/colour
    purchase = payload_from_document(
        "purchase",
        {"order_id": "o", "lines": [line], "shipping_fee": 0.0, "shipped": False, "channel": "", "store_id": ""},
    )
    assert purchase.lines[0].category == ""


def buy(event_id: str, customer_id: str, amount: float, days_ago: float) -> AcceptedEvent:
    payload = ev.Purchase(event_id, (ev.OrderLine(f"SKU-{event_id}", 1, amount, amount),), 0.0, False, "pos", "")
    return AcceptedEvent(event_id, customer_id, NOW - timedelta(days=days_ago), "test", payload)


def looked(event_id: str, customer_id: str, sku: str, hours_ago: float) -> AcceptedEvent:
    return AcceptedEvent(event_id, customer_id, NOW - timedelta(hours=hours_ago), "test", ev.ProductView(sku, 5.0))


def incrementally(events: list[AcceptedEvent]) -> ProfileState:
    state = ProfileState()
    for event in events:  # in arrival order, as ingest folds batch after batch
        state.apply(event, NOW)
    return state


def test_fold_equals_the_incremental_state_whatever_the_arrival_order():
    events = [
        buy("e-1", "c-1", 40.0, 100),
        looked("e-2", "c-1", "SKU-9", 30),
        buy("e-3", "c-1", 15.0, 2),
        AcceptedEvent("e-4", "c-1", NOW - timedelta(days=1), "test", ev.LoyaltyChange(50, 2)),
        AcceptedEvent("e-5", "c-1", NOW - timedelta(days=3), "test", ev.LoyaltyChange(10, 4)),
    ]
    arrived = [events[2], events[4], events[0], events[3], events[1]]
    assert fold(arrived, NOW).traits(NOW) == incrementally(events).traits(NOW)
    assert fold(arrived, NOW).to_document() == fold(list(reversed(arrived)), NOW).to_document()


def test_fold_of_two_customers_events_combines_their_traits():
    ann = [buy("a-1", "ann", 100.0, 40), buy("a-2", "ann", 30.0, 5), looked("a-v", "ann", "SKU-A", 3)]
    bob = [buy("b-1", "bob", 50.0, 20), looked("b-v", "bob", "SKU-B", 1)]
    combined = fold(ann + bob, NOW).traits(NOW)
    assert (combined.order_count, combined.total_spend) == (3, 180.0)
    assert combined.spend_30d == 80.0  # 30 (5 days ago) + 50 (20 days ago)
    assert [viewed.sku for viewed in combined.last_viewed] == ["SKU-B", "SKU-A"]
    assert fold(ann + bob, NOW).first_seen_at == NOW - timedelta(days=40)
    # Splitting back is folding each one's own events again.
    assert fold(ann, NOW).traits(NOW) == incrementally(ann).traits(NOW)


def test_fold_of_nothing_is_the_empty_state():
    assert fold([], NOW) == ProfileState()


def test_the_fold_version_marks_states_an_older_release_folded_and_outlives_later_events():
    current = fold([buy("e-1", "c-1", 40.0, 10)], NOW)
    assert current.fold_version == FOLD_VERSION
    document = orjson.loads(orjson.dumps(current.to_document()))  # through JSON, as stored
    assert ProfileState.from_document(document).fold_version == FOLD_VERSION
    del document["fold_version"]  # as a release before fold versions stored it
    older = ProfileState.from_document(document)
    assert older.fold_version == 0
    older.apply(buy("e-2", "c-1", 10.0, 1), NOW)  # a new event does not make the history complete
    assert older.to_document()["fold_version"] == 0
    assert fold([buy("e-1", "c-1", 40.0, 10), buy("e-2", "c-1", 10.0, 1)], NOW).fold_version == FOLD_VERSION
