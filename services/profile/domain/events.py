"""The events a profile is built from, as plain domain values (no protobuf), and their readable summaries.

Each payload kind is named like its field in the `Event.payload` oneof, so rejections and stored kinds use the
contract's names (e.g. "purchase.lines[0].quantity", kind "product_return").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

#: Return methods, as the keys of the return-method mix.
RETURN_METHODS = ("store", "mail", "courier")
#: Cart actions.
CART_ACTIONS = ("add", "remove", "clear")
#: Offer response types.
OFFER_RESPONSES = ("impression", "click", "accept", "decline", "purchase")
#: Loyalty tiers by rank (0 = none known); a tier's rank is its feature value.
LOYALTY_TIERS = ("none", "bronze", "silver", "gold", "platinum")
#: Ledger entry types.
LEDGER_ENTRY_TYPES = ("refund", "write_off")


@dataclass(frozen=True, slots=True)
class Identifier:
    """An identifier seen with an event; `type` is the nextbest.common.v1.IdentifierType number."""

    type: int
    value: str


@dataclass(frozen=True, slots=True)
class PageView:
    page: str

    kind = "page_view"


@dataclass(frozen=True, slots=True)
class ProductView:
    sku: str
    dwell_seconds: float

    kind = "product_view"


@dataclass(frozen=True, slots=True)
class CartChange:
    action: str  # one of CART_ACTIONS, "" when not set
    sku: str
    quantity: int
    unit_price: float

    kind = "cart_change"


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    quantity: int
    unit_price: float
    list_price: float  # 0 means unknown, counted as full price
    # Optional product attributes ("" when unknown) feeding the favourite categories, brands, sizes and colours.
    category: str = ""
    brand: str = ""
    size: str = ""
    colour: str = ""


@dataclass(frozen=True, slots=True)
class Purchase:
    order_id: str
    lines: tuple[OrderLine, ...]
    shipping_fee: float
    shipped: bool
    channel: str  # "web", "pos", "call_center", "email" or "" when not set
    store_id: str

    kind = "purchase"

    @property
    def total(self) -> float:
        return sum(line.quantity * line.unit_price for line in self.lines)


@dataclass(frozen=True, slots=True)
class ReturnLine:
    sku: str
    quantity: int
    refund_amount: float
    category: str = ""  # optional; feeds the recently returned items


@dataclass(frozen=True, slots=True)
class ProductReturn:
    order_id: str
    lines: tuple[ReturnLine, ...]
    method: str  # one of RETURN_METHODS, "" when not set
    reason: str

    kind = "product_return"

    @property
    def refunded(self) -> float:
        return sum(line.refund_amount for line in self.lines)


@dataclass(frozen=True, slots=True)
class ServiceContact:
    reason: str
    resolved: bool

    kind = "service_contact"


@dataclass(frozen=True, slots=True)
class LoyaltyChange:
    points_delta: int
    tier: int  # rank in LOYALTY_TIERS; 0 keeps the current tier

    kind = "loyalty_change"


@dataclass(frozen=True, slots=True)
class OfferResponse:
    decision_id: str
    offer_id: str
    response: str  # one of OFFER_RESPONSES, "" when not set

    kind = "offer_response"


@dataclass(frozen=True, slots=True)
class PreferenceUpdate:
    sizes: tuple[str, ...]
    colours: tuple[str, ...]
    shipping_method: str

    kind = "preference_update"


@dataclass(frozen=True, slots=True)
class Search:
    query: str
    results: int

    kind = "search"


@dataclass(frozen=True, slots=True)
class CartAbandoned:
    cart_value: float
    items: int

    kind = "cart_abandoned"


@dataclass(frozen=True, slots=True)
class Checkout:
    cart_value: float
    items: int
    channel: str  # as Purchase.channel

    kind = "checkout"


@dataclass(frozen=True, slots=True)
class StoreVisit:
    store_id: str
    duration_seconds: float

    kind = "store_visit"


@dataclass(frozen=True, slots=True)
class Login:
    channel: str  # as Purchase.channel

    kind = "login"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    type: str  # one of LEDGER_ENTRY_TYPES, "" when not set
    amount: float
    order_id: str

    kind = "ledger_entry"


@dataclass(frozen=True, slots=True)
class ModelPrediction:
    """A model's prediction written back by a batch scoring job; the event time is when it scored."""

    use_case: str
    model_name: str
    model_version: str
    value: float

    kind = "model_prediction"


Payload = (
    PageView
    | ProductView
    | CartChange
    | Purchase
    | ProductReturn
    | ServiceContact
    | LoyaltyChange
    | OfferResponse
    | PreferenceUpdate
    | Search
    | CartAbandoned
    | Checkout
    | StoreVisit
    | Login
    | LedgerEntry
    | ModelPrediction
)


@dataclass(frozen=True, slots=True)
class Event:
    """One touchpoint or back-end event as received; `validate_event` decides whether it may be applied."""

    event_id: str
    customer_id: str
    identifiers: tuple[Identifier, ...]
    #: None when the producer sent no (or an unrepresentable) time.
    occurred_at: datetime | None
    source: str
    #: None when the producer set no payload.
    payload: Payload | None


@dataclass(frozen=True, slots=True)
class AcceptedEvent:
    """A valid event bound to its customer: what is stored and folded into the customer's state."""

    event_id: str
    customer_id: str
    occurred_at: datetime
    source: str
    payload: Payload

    @property
    def kind(self) -> str:
        return self.payload.kind

    def payload_document(self) -> dict[str, Any]:
        """The payload as a JSON-ready dict (stored for audit and replay)."""
        return _plain(self.payload)


def payload_from_document(kind: str, document: dict[str, Any]) -> Payload:
    """The payload `AcceptedEvent.payload_document` stored, read back (refolding a merged customer's events)."""
    cls = _PAYLOADS[kind]
    values = dict(document)
    if cls is Purchase:
        values["lines"] = tuple(OrderLine(**line) for line in values["lines"])
    elif cls is ProductReturn:
        values["lines"] = tuple(ReturnLine(**line) for line in values["lines"])
    elif cls is PreferenceUpdate:
        values["sizes"], values["colours"] = tuple(values["sizes"]), tuple(values["colours"])
    return cls(**values)


_PAYLOADS: dict[str, type] = {cls.kind: cls for cls in get_args(Payload)}


def _plain(value: Any) -> Any:
    """Dataclasses as dicts and tuples as lists, recursively (dataclasses.asdict deep-copies: ~5x slower)."""
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    return value


def _money(value: float) -> str:
    return f"{value:.2f}"


def _lines(count: int) -> str:
    return f"{count} line{'' if count == 1 else 's'}"


def summarize(payload: Payload) -> str:
    """A short readable line for recent activity, e.g. "purchase 2 lines 84.50" or "viewed SKU-1 for 42s"."""
    match payload:
        case PageView(page=page):
            return f"viewed page {page}"
        case ProductView(sku=sku, dwell_seconds=dwell):
            return f"viewed {sku} for {dwell:.0f}s"
        case CartChange(action="clear"):
            return "cart cleared"
        case CartChange(action=action, sku=sku, quantity=quantity):
            return f"cart {action} {quantity} x {sku}"
        case Purchase(lines=lines):
            return f"purchase {_lines(len(lines))} {_money(payload.total)}"
        case ProductReturn(lines=lines, method=method):
            return f"return {_lines(len(lines))} by {method}, refund {_money(payload.refunded)}"
        case ServiceContact(reason=reason, resolved=resolved):
            return f"service contact {reason} ({'resolved' if resolved else 'open'})"
        case LoyaltyChange(points_delta=delta, tier=tier):
            tier_part = f", tier {LOYALTY_TIERS[tier]}" if tier else ""
            return f"loyalty {delta:+d} points{tier_part}"
        case OfferResponse(offer_id=offer_id, response=response):
            return f"offer {offer_id} {response}"
        case PreferenceUpdate():
            changed = [
                name
                for name, value in (
                    ("sizes", payload.sizes),
                    ("colours", payload.colours),
                    ("shipping", payload.shipping_method),
                )
                if value
            ]
            return f"preferences updated: {', '.join(changed)}"
        case Search(query=query, results=results):
            return f"searched {query!r} ({results} results)"
        case CartAbandoned(cart_value=value, items=items):
            return f"cart abandoned: {items} items, {_money(value)}"
        case Checkout(cart_value=value, items=items):
            return f"checkout started: {items} items, {_money(value)}"
        case StoreVisit(store_id=store_id):
            return f"visited store {store_id}"
        case Login(channel=channel):
            return f"signed in{' on ' + channel if channel else ''}"
        case LedgerEntry(type=kind, amount=amount):
            return f"ledger {kind.replace('_', '-')} {_money(amount)}"
        case ModelPrediction(use_case=use_case, model_version=version, value=value):
            return f"model {use_case} {value:.4g} (version {version})"
    raise TypeError(f"unknown payload {payload!r}")
