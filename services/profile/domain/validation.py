"""Validation of one incoming event: the first problem found is raised as InvalidArgument(field, reason).

Field paths follow the contract (e.g. "purchase.lines[0].quantity", "product_return.method"), so a producer can
find the offending field in its own message.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from datetime import datetime, timedelta
from typing import Any

from libs.errors import InvalidArgument
from services.profile.domain.events import (
    CART_ACTIONS,
    LEDGER_ENTRY_TYPES,
    LOYALTY_TIERS,
    OFFER_RESPONSES,
    RETURN_METHODS,
    CartAbandoned,
    CartChange,
    Checkout,
    Event,
    LedgerEntry,
    Login,
    LoyaltyChange,
    ModelPrediction,
    OfferResponse,
    PageView,
    Payload,
    PreferenceUpdate,
    ProductReturn,
    ProductView,
    Purchase,
    Search,
    ServiceContact,
    StoreVisit,
)

MAX_ID_LENGTH = 128
#: Sources name producing systems ("web", "pos", "erp"): short names, not free text.
MAX_SOURCE_LENGTH = 64
#: Longest text a payload field may hold (SKUs, reasons, search queries, categories...): traits keep these
#: strings (last viewed, cart, favourites, open issues, recent searches), so one unbounded value would grow every
#: state that holds it, and every read of it.
MAX_TEXT_LENGTH = 256
#: Fields allowed more or less: a page is a URL, a reason and a search query are typed by people; a use case is a
#: map key of every profile (a short name, not free text).
TEXT_LIMITS = {"page": 2048, "reason": 1024, "query": 512, "use_case": 64}
#: Producers' clocks drift; an event further ahead than this is a producer bug, not drift.
MAX_CLOCK_SKEW = timedelta(minutes=5)


def validate_event(event: Event, now: datetime) -> None:
    """Raise InvalidArgument naming the first malformed field of `event`; return when it may be applied."""
    if not event.event_id:
        raise InvalidArgument("event_id", "required")
    if len(event.event_id) > MAX_ID_LENGTH:
        raise InvalidArgument("event_id", f"at most {MAX_ID_LENGTH} characters")
    if len(event.customer_id) > MAX_ID_LENGTH:
        raise InvalidArgument("customer_id", f"at most {MAX_ID_LENGTH} characters")
    if not event.customer_id:
        if not event.identifiers:
            raise InvalidArgument("customer_id", "required when no identifiers are given")
        for i, identifier in enumerate(event.identifiers):
            if identifier.type == 0:
                raise InvalidArgument(f"identifiers[{i}].type", "required")
            if not identifier.value.strip():
                raise InvalidArgument(f"identifiers[{i}].value", "required")
    if event.occurred_at is None:
        raise InvalidArgument("occurred_at", "required: a valid timestamp")
    if not event.source.strip():
        raise InvalidArgument("source", "required: the producing system, e.g. web, pos, erp")
    if len(event.source) > MAX_SOURCE_LENGTH:
        raise InvalidArgument("source", f"at most {MAX_SOURCE_LENGTH} characters")
    if event.occurred_at > now + MAX_CLOCK_SKEW:
        raise InvalidArgument("occurred_at", "more than 5 minutes in the future")
    if event.payload is None:
        raise InvalidArgument("payload", "exactly one payload is required")
    _validate_payload(event.payload)
    _bounded_text(event.payload, event.payload.kind)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def _bounded_text(value: Any, where: str) -> None:
    """Every string of a payload, in its lines and lists too, at most MAX_TEXT_LENGTH characters (TEXT_LIMITS
    for the fields it names)."""
    for name in _field_names(type(value)):
        item = getattr(value, name)
        limit = TEXT_LIMITS.get(name, MAX_TEXT_LENGTH)
        if isinstance(item, str):
            if len(item) > limit:
                raise InvalidArgument(f"{where}.{name}", f"at most {limit} characters, got {len(item)}")
        elif isinstance(item, tuple):  # of strings (sizes, colours) or of lines (dataclasses)
            for i, element in enumerate(item):
                if not isinstance(element, str):
                    _bounded_text(element, f"{where}.{name}[{i}]")
                elif len(element) > limit:
                    raise InvalidArgument(f"{where}.{name}[{i}]", f"at most {limit} characters, got {len(element)}")


def _non_negative(value: float, field: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(field, f"must be a finite number >= 0, got {value}")


def _required(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "required")


def _one_of(value: str, allowed: tuple[str, ...], field: str) -> None:
    """Enum values arrive as domain names; "" means unset and "#n" a number the contract does not define."""
    if value not in allowed:
        expected = ", ".join(name.upper() for name in allowed)
        raise InvalidArgument(field, f"required (one of {expected})" if not value else f"unknown value {value}")


def _validate_payload(payload: Payload) -> None:
    where = payload.kind
    match payload:
        case PageView(page=page):
            _required(page, f"{where}.page")
        case ProductView(sku=sku, dwell_seconds=dwell):
            _required(sku, f"{where}.sku")
            _non_negative(dwell, f"{where}.dwell")
        case CartChange(action=action, sku=sku, quantity=quantity, unit_price=unit_price):
            _one_of(action, CART_ACTIONS, f"{where}.action")
            if action != "clear":
                _required(sku, f"{where}.sku")
                if quantity < 1:
                    raise InvalidArgument(f"{where}.quantity", f"must be at least 1, got {quantity}")
                _non_negative(unit_price, f"{where}.unit_price")
        case Purchase(lines=lines, shipping_fee=shipping_fee):
            if not lines:
                raise InvalidArgument(f"{where}.lines", "at least one line")
            for i, line in enumerate(lines):
                at = f"{where}.lines[{i}]"
                _required(line.sku, f"{at}.sku")
                if line.quantity < 1:
                    raise InvalidArgument(f"{at}.quantity", f"must be at least 1, got {line.quantity}")
                _non_negative(line.unit_price, f"{at}.unit_price")
                _non_negative(line.list_price, f"{at}.list_price")
                if line.list_price and line.list_price < line.unit_price:
                    raise InvalidArgument(
                        f"{at}.list_price",
                        f"below unit_price ({line.list_price} < {line.unit_price}); use 0 when unknown",
                    )
            _non_negative(shipping_fee, f"{where}.shipping_fee")
        case ProductReturn(lines=lines, method=method):
            if not lines:
                raise InvalidArgument(f"{where}.lines", "at least one line")
            for i, line in enumerate(lines):
                at = f"{where}.lines[{i}]"
                _required(line.sku, f"{at}.sku")
                if line.quantity < 1:
                    raise InvalidArgument(f"{at}.quantity", f"must be at least 1, got {line.quantity}")
                _non_negative(line.refund_amount, f"{at}.refund_amount")
            _one_of(method, RETURN_METHODS, f"{where}.method")
        case ServiceContact(reason=reason):
            # Open issues are matched to their resolution by reason.
            _required(reason, f"{where}.reason")
        case LoyaltyChange(tier=tier):
            # Any delta is meaningful; tier 0 keeps the current tier.
            if not 0 <= tier < len(LOYALTY_TIERS):
                raise InvalidArgument(f"{where}.tier", f"unknown value #{tier}")
        case OfferResponse(decision_id=decision_id, offer_id=offer_id, response=response):
            _required(decision_id, f"{where}.decision_id")
            _required(offer_id, f"{where}.offer_id")
            _one_of(response, OFFER_RESPONSES, f"{where}.response")
        case PreferenceUpdate(sizes=sizes, colours=colours, shipping_method=shipping_method):
            if not (sizes or colours or shipping_method):
                raise InvalidArgument(where, "sets none of sizes, colours, shipping_method")
            for field, values in (("sizes", sizes), ("colours", colours)):
                for i, value in enumerate(values):
                    _required(value, f"{where}.{field}[{i}]")
        case Search(query=query, results=results):
            if not query.strip():
                raise InvalidArgument(f"{where}.query", "required")
            if results < 0:
                raise InvalidArgument(f"{where}.results", f"must be >= 0, got {results}")
        case CartAbandoned(cart_value=value, items=items) | Checkout(cart_value=value, items=items):
            _non_negative(value, f"{where}.cart_value")
            if items < 0:
                raise InvalidArgument(f"{where}.items", f"must be >= 0, got {items}")
        case StoreVisit(store_id=store_id, duration_seconds=duration):
            _required(store_id, f"{where}.store_id")
            _non_negative(duration, f"{where}.duration")
        case Login():
            pass  # the channel is optional
        case LedgerEntry(type=kind, amount=amount):
            _one_of(kind, LEDGER_ENTRY_TYPES, f"{where}.type")
            _non_negative(amount, f"{where}.amount")
            if not amount:
                raise InvalidArgument(f"{where}.amount", "must be > 0")
        case ModelPrediction(use_case=use_case, model_version=version, value=value):
            _required(use_case, f"{where}.use_case")  # its length is bounded with every text (TEXT_LIMITS)
            _required(version, f"{where}.model_version")
            if not math.isfinite(value):  # a regression may predict below zero, but never NaN or infinity
                raise InvalidArgument(f"{where}.value", f"must be a finite number, got {value}")
