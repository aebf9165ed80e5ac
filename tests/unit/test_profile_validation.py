"""Validation of one incoming event: each malformed field is named by its contract path."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from libs.errors import InvalidArgument
from services.profile.domain import Event, Identifier, validate_event
from services.profile.domain import events as ev
from services.profile.domain.validation import MAX_TEXT_LENGTH, TEXT_LIMITS

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
LINE = ev.OrderLine("SKU-1", 1, 10.0, 12.0)
PURCHASE = ev.Purchase("o-1", (LINE,), 0.0, False, "pos", "store-1")
RETURN_LINE = ev.ReturnLine("SKU-1", 1, 10.0)
RETURN = ev.ProductReturn("o-1", (RETURN_LINE,), "mail", "size")


def make(payload: ev.Payload | None = PURCHASE, **changes) -> Event:
    base = Event("e-1", "c-1", (), NOW - timedelta(hours=1), "web", payload)
    return replace(base, **changes)


def rejection(event: Event) -> tuple[str, str]:
    with pytest.raises(InvalidArgument) as raised:
        validate_event(event, NOW)
    return raised.value.field, raised.value.reason


VALID_PAYLOADS = [
    ev.PageView("home"),
    ev.ProductView("SKU-1", 0.0),
    ev.CartChange("add", "SKU-1", 1, 10.0),
    ev.CartChange("clear", "", 0, 0.0),  # sku and quantity ignored for CLEAR
    PURCHASE,
    replace(PURCHASE, lines=(replace(LINE, list_price=0.0),)),  # list price unknown
    RETURN,
    ev.ServiceContact("complaint", False),
    ev.LoyaltyChange(-50, 0),
    ev.OfferResponse("d-1", "off-1", "accept"),
    ev.PreferenceUpdate((), (), "express"),
]


@pytest.mark.parametrize("payload", VALID_PAYLOADS, ids=lambda p: type(p).__name__)
def test_well_formed_events_pass(payload):
    validate_event(make(payload), NOW)


def test_identifiers_stand_in_for_a_missing_customer_id():
    validate_event(make(customer_id="", identifiers=(Identifier(1, "a@example.com"),)), NOW)


@pytest.mark.parametrize(
    ("changes", "field", "reason_part"),
    [
        ({"event_id": ""}, "event_id", "required"),
        ({"event_id": "x" * 129}, "event_id", "at most 128"),
        ({"customer_id": "c" * 129}, "customer_id", "at most 128"),
        ({"customer_id": ""}, "customer_id", "required when no identifiers"),
        ({"customer_id": "", "identifiers": (Identifier(0, "a@example.com"),)}, "identifiers[0].type", "required"),
        (
            {"customer_id": "", "identifiers": (Identifier(1, "a@b.c"), Identifier(2, " "))},
            "identifiers[1].value",
            "required",
        ),
        ({"occurred_at": None}, "occurred_at", "required"),
        ({"occurred_at": NOW + timedelta(minutes=6)}, "occurred_at", "future"),
        ({"source": ""}, "source", "required"),
        ({"source": "  "}, "source", "required"),
        ({"source": "s" * 65}, "source", "at most 64"),
        ({"payload": None}, "payload", "exactly one"),
    ],
)
def test_envelope_problems_name_the_field(changes, field, reason_part):
    found_field, reason = rejection(make(**changes))
    assert found_field == field
    assert reason_part in reason


def test_a_little_clock_skew_is_tolerated():
    validate_event(make(occurred_at=NOW + timedelta(minutes=4)), NOW)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (ev.PageView(""), "page_view.page"),
        (ev.ProductView("", 3.0), "product_view.sku"),
        (ev.ProductView("SKU-1", -1.0), "product_view.dwell"),
        (ev.CartChange("", "SKU-1", 1, 1.0), "cart_change.action"),
        (ev.CartChange("#9", "SKU-1", 1, 1.0), "cart_change.action"),
        (ev.CartChange("add", "", 1, 1.0), "cart_change.sku"),
        (ev.CartChange("remove", "SKU-1", 0, 1.0), "cart_change.quantity"),
        (ev.CartChange("add", "SKU-1", 1, -1.0), "cart_change.unit_price"),
        (replace(PURCHASE, lines=()), "purchase.lines"),
        (replace(PURCHASE, lines=(LINE, replace(LINE, quantity=0))), "purchase.lines[1].quantity"),
        (replace(PURCHASE, lines=(replace(LINE, sku=""),)), "purchase.lines[0].sku"),
        (replace(PURCHASE, lines=(replace(LINE, unit_price=-0.01),)), "purchase.lines[0].unit_price"),
        (replace(PURCHASE, lines=(replace(LINE, unit_price=math.nan),)), "purchase.lines[0].unit_price"),
        (replace(PURCHASE, lines=(replace(LINE, list_price=-1.0),)), "purchase.lines[0].list_price"),
        (replace(PURCHASE, lines=(replace(LINE, unit_price=15.0, list_price=12.0),)), "purchase.lines[0].list_price"),
        (replace(PURCHASE, shipping_fee=math.inf), "purchase.shipping_fee"),
        (replace(RETURN, lines=()), "product_return.lines"),
        (replace(RETURN, lines=(replace(RETURN_LINE, quantity=0),)), "product_return.lines[0].quantity"),
        (replace(RETURN, lines=(replace(RETURN_LINE, refund_amount=-5.0),)), "product_return.lines[0].refund_amount"),
        (replace(RETURN, method=""), "product_return.method"),
        (ev.ServiceContact("", True), "service_contact.reason"),
        (ev.LoyaltyChange(10, 7), "loyalty_change.tier"),
        (ev.OfferResponse("", "off-1", "accept"), "offer_response.decision_id"),
        (ev.OfferResponse("d-1", "", "accept"), "offer_response.offer_id"),
        (ev.OfferResponse("d-1", "off-1", ""), "offer_response.response"),
        (ev.PreferenceUpdate((), (), ""), "preference_update"),
        (ev.PreferenceUpdate(("M", ""), (), ""), "preference_update.sizes[1]"),
    ],
)
def test_payload_problems_name_the_contract_path(payload, field):
    assert rejection(make(payload))[0] == field


LONG = "x" * (MAX_TEXT_LENGTH + 1)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (ev.ProductView(LONG, 3.0), "product_view.sku"),
        (replace(PURCHASE, store_id=LONG), "purchase.store_id"),
        (replace(PURCHASE, lines=(LINE, replace(LINE, brand=LONG))), "purchase.lines[1].brand"),
        (replace(RETURN, lines=(replace(RETURN_LINE, category=LONG),)), "product_return.lines[0].category"),
        (ev.PreferenceUpdate(("M", LONG), (), ""), "preference_update.sizes[1]"),
    ],
)
def test_text_longer_than_the_limit_is_refused_where_it_is(payload, field):
    """Traits keep these strings: an unbounded one would grow every state holding it."""
    assert rejection(make(payload)) == (field, f"at most {MAX_TEXT_LENGTH} characters, got {MAX_TEXT_LENGTH + 1}")
    validate_event(make(ev.ProductView("x" * MAX_TEXT_LENGTH, 0.0)), NOW)  # at the limit


@pytest.mark.parametrize(("payload", "field"), [
    (lambda text: ev.PageView(text), "page_view.page"),
    (lambda text: ev.Search(text, 3), "search.query"),
    (lambda text: ev.ServiceContact(text, False), "service_contact.reason"),
    (lambda text: replace(RETURN, reason=text), "product_return.reason"),
])
def test_urls_reasons_and_queries_may_be_longer(payload, field):
    limit = TEXT_LIMITS[field.rsplit(".", 1)[1]]
    assert limit > MAX_TEXT_LENGTH
    validate_event(make(payload("x" * limit)), NOW)
    assert rejection(make(payload("x" * (limit + 1)))) == (field, f"at most {limit} characters, got {limit + 1}")


def test_reasons_say_what_is_wrong():
    assert rejection(make(replace(PURCHASE, lines=(replace(LINE, quantity=0),))))[1] == "must be at least 1, got 0"
    assert "one of STORE, MAIL, COURIER" in rejection(make(replace(RETURN, method="")))[1]
    assert rejection(make(ev.CartChange("#9", "SKU-1", 1, 1.0)))[1] == "unknown value #9"
