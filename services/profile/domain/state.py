"""A customer's profile state, folded incrementally from events, and the traits read from it.

Folding is O(1)-ish per event: no trait is ever recomputed from the event history. Events may arrive out of
order (late ERP feeds, retried producers), so every "latest" trait compares event times instead of trusting
arrival order:

- loyalty tier and each preference field keep the time they were set and only a newer event replaces them;
- last viewed SKUs are kept sorted by view time (newest first, one entry per SKU, at most 10);
- the cart is a time-ordered log of the ADD/REMOVE changes since the last clear (a CLEAR or a purchase). A
  clear drops the changes older than itself, a change older than the last clear is ignored, and the cart is
  the log replayed in time order (quantities never below zero). So the cart is the same whatever order the
  events arrive in. The log is compacted to one entry per SKU beyond CART_LOG_LIMIT entries; only a clear
  arriving late *and* older than a compacted entry then keeps that line (bounded state beats exactness there);
- open service issues keep their times per reason: a resolved contact closes the oldest open issue with the
  same reason opened at or before it; a resolution that closed nothing is remembered (the newest few per
  reason) so an older unresolved contact arriving after it is closed by it;
- return times are kept for the last RECENT_RETURNS_WINDOW so `recent_returns` is computed at read time.

The state is stored as a JSON document (`to_document` / `from_document`); missing keys read as defaults so new
traits can be added without a data migration.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.profile.domain.events import (
    RETURN_METHODS,
    AcceptedEvent,
    CartChange,
    LoyaltyChange,
    OfferResponse,
    PageView,
    PreferenceUpdate,
    ProductReturn,
    ProductView,
    Purchase,
    ServiceContact,
)

RECENT_RETURNS_WINDOW = timedelta(days=30)
LAST_VIEWED_LIMIT = 10
CART_LOG_LIMIT = 100
#: A compacted cart keeps at most this many lines (the most recently touched): a real cart is far smaller, and the
#: bound keeps compaction to once per 50+ changes and the stored state small for a bot that adds forever.
CART_LINES_LIMIT = 50
EARLY_RESOLUTIONS_LIMIT = 10


@dataclass(frozen=True, slots=True)
class ViewedSku:
    sku: str
    dwell_seconds: float
    viewed_at: datetime


@dataclass(frozen=True, slots=True)
class CartEntry:
    """One cart change since the last clear; `delta` is signed (REMOVE is negative)."""

    at: datetime
    sku: str
    delta: int
    unit_price: float


@dataclass(frozen=True, slots=True)
class CartLine:
    sku: str
    quantity: int
    unit_price: float


@dataclass(frozen=True, slots=True)
class Preferences:
    sizes: tuple[str, ...] = ()
    colours: tuple[str, ...] = ()
    shipping_method: str = ""


@dataclass(frozen=True, slots=True)
class Traits:
    """The computed traits of one customer as of `now` (mirrors the contract's Traits message)."""

    total_spend: float
    order_count: int
    average_order_value: float
    last_purchase_at: datetime | None
    days_since_last_purchase: int  # -1 when never
    return_rate: float
    return_count: int
    return_method_mix: dict[str, float]
    full_price_share: float
    shipping_paid_share: float
    loyalty_tier: int
    loyalty_points: int
    open_service_issues: int
    service_contacts: int
    last_viewed: tuple[ViewedSku, ...]
    cart: tuple[CartLine, ...]
    preferences: Preferences
    recent_returns: int
    net_value: float


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _newer(at: datetime, than: datetime | None) -> bool:
    return than is None or at >= than


@dataclass(slots=True)
class ProfileState:
    """Everything the traits are computed from; mutated in place by `apply`."""

    first_seen_at: datetime | None = None
    # purchases
    total_spend: float = 0.0
    order_count: int = 0
    last_purchase_at: datetime | None = None
    units: int = 0
    full_price_units: int = 0
    shipped_orders: int = 0
    shipping_paid_orders: int = 0
    # returns
    refunded: float = 0.0
    return_count: int = 0
    return_methods: dict[str, int] = field(default_factory=dict)
    return_times: list[datetime] = field(default_factory=list)
    # loyalty
    loyalty_tier: int = 0
    loyalty_tier_at: datetime | None = None
    loyalty_points: int = 0
    # service
    service_contacts: int = 0
    open_issues: dict[str, list[datetime]] = field(default_factory=dict)
    early_resolutions: dict[str, list[datetime]] = field(default_factory=dict)
    # browsing and cart
    last_viewed: list[ViewedSku] = field(default_factory=list)
    cart_cleared_at: datetime | None = None
    cart_log: list[CartEntry] = field(default_factory=list)
    # preferences, each with the time it was set
    sizes: tuple[str, ...] = ()
    sizes_at: datetime | None = None
    colours: tuple[str, ...] = ()
    colours_at: datetime | None = None
    shipping_method: str = ""
    shipping_method_at: datetime | None = None
    # offer responses by type
    offer_responses: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ folding

    def apply(self, event: AcceptedEvent, now: datetime) -> None:
        """Fold one new event into the state (`now` bounds the kept return times)."""
        at = event.occurred_at
        if self.first_seen_at is None or at < self.first_seen_at:
            self.first_seen_at = at
        match event.payload:
            case Purchase() as purchase:
                self._purchase(purchase, at)
            case ProductReturn() as product_return:
                self._return(product_return, at, now)
            case CartChange() as change:
                self._cart_change(change, at)
            case ProductView(sku=sku, dwell_seconds=dwell):
                self._viewed(ViewedSku(sku, dwell, at))
            case ServiceContact(reason=reason, resolved=resolved):
                self._service_contact(reason, resolved, at)
            case LoyaltyChange(points_delta=delta, tier=tier):
                self.loyalty_points += delta
                if tier and _newer(at, self.loyalty_tier_at):
                    self.loyalty_tier, self.loyalty_tier_at = tier, at
            case OfferResponse(response=response):
                self.offer_responses[response] = self.offer_responses.get(response, 0) + 1
            case PreferenceUpdate() as update:
                self._preferences(update, at)
            case PageView():
                pass  # only recent activity and first_seen_at

    def _purchase(self, purchase: Purchase, at: datetime) -> None:
        self.total_spend += purchase.total
        self.order_count += 1
        if self.last_purchase_at is None or at > self.last_purchase_at:
            self.last_purchase_at = at
        for line in purchase.lines:
            self.units += line.quantity
            # list_price 0 means the producer does not know it: counted as full price.
            if not line.list_price or line.unit_price >= line.list_price:
                self.full_price_units += line.quantity
        if purchase.shipped:
            self.shipped_orders += 1
            if purchase.shipping_fee > 0:
                self.shipping_paid_orders += 1
        self._clear_cart(at)  # the cart was checked out

    def _return(self, product_return: ProductReturn, at: datetime, now: datetime) -> None:
        self.refunded += product_return.refunded
        self.return_count += 1
        self.return_methods[product_return.method] = self.return_methods.get(product_return.method, 0) + 1
        horizon = now - RECENT_RETURNS_WINDOW
        if at >= horizon:
            insort(self.return_times, at)
        # Times before the window can never count again: time only moves forward.
        del self.return_times[: bisect_left(self.return_times, horizon)]

    def _cart_change(self, change: CartChange, at: datetime) -> None:
        if change.action == "clear":
            self._clear_cart(at)
            return
        if self.cart_cleared_at is not None and at <= self.cart_cleared_at:
            return  # happened before the cart was cleared or checked out
        delta = change.quantity if change.action == "add" else -change.quantity
        insort(self.cart_log, CartEntry(at, change.sku, delta, change.unit_price), key=lambda entry: entry.at)
        if len(self.cart_log) > CART_LOG_LIMIT:
            latest = {entry.sku: entry.at for entry in self.cart_log}
            lines = self.cart_lines()
            compacted = sorted(
                (CartEntry(latest[line.sku], line.sku, line.quantity, line.unit_price) for line in lines),
                key=lambda entry: entry.at,
            )
            self.cart_log = compacted[-CART_LINES_LIMIT:]

    def _clear_cart(self, at: datetime) -> None:
        if self.cart_cleared_at is None or at > self.cart_cleared_at:
            self.cart_cleared_at = at
            self.cart_log = [entry for entry in self.cart_log if entry.at > at]

    def _viewed(self, view: ViewedSku) -> None:
        for i, seen in enumerate(self.last_viewed):
            if seen.sku == view.sku:
                if seen.viewed_at >= view.viewed_at:
                    return  # a newer view of this SKU is already kept
                del self.last_viewed[i]
                break
        self.last_viewed.append(view)
        self.last_viewed.sort(key=lambda seen: seen.viewed_at, reverse=True)
        del self.last_viewed[LAST_VIEWED_LIMIT:]

    def _service_contact(self, reason: str, resolved: bool, at: datetime) -> None:
        self.service_contacts += 1
        if resolved:
            opened = self.open_issues.get(reason, [])
            if opened and opened[0] <= at:
                opened.pop(0)
                if not opened:
                    del self.open_issues[reason]
                return
            early = self.early_resolutions.setdefault(reason, [])
            insort(early, at)
            del early[:-EARLY_RESOLUTIONS_LIMIT]
            return
        early = self.early_resolutions.get(reason, [])
        closing = bisect_left(early, at)
        if closing < len(early):  # a resolution at or after this contact already arrived
            early.pop(closing)
            if not early:
                del self.early_resolutions[reason]
            return
        insort(self.open_issues.setdefault(reason, []), at)

    def _preferences(self, update: PreferenceUpdate, at: datetime) -> None:
        if update.sizes and _newer(at, self.sizes_at):
            self.sizes, self.sizes_at = update.sizes, at
        if update.colours and _newer(at, self.colours_at):
            self.colours, self.colours_at = update.colours, at
        if update.shipping_method and _newer(at, self.shipping_method_at):
            self.shipping_method, self.shipping_method_at = update.shipping_method, at

    # ------------------------------------------------------------------ reading

    def cart_lines(self) -> list[CartLine]:
        """The cart: the log replayed in time order; a line's price is its newest ADD's price."""
        quantities: dict[str, int] = {}
        prices: dict[str, float] = {}
        for entry in self.cart_log:
            quantities[entry.sku] = max(0, quantities.get(entry.sku, 0) + entry.delta)
            if entry.delta > 0:
                prices[entry.sku] = entry.unit_price
        return [CartLine(sku, quantity, prices.get(sku, 0.0)) for sku, quantity in quantities.items() if quantity]

    def traits(self, now: datetime) -> Traits:
        """The traits as of `now` (days since last purchase and recent returns depend on it)."""
        if self.last_purchase_at is None:
            days_since = -1
        else:
            days_since = max(0, (now - self.last_purchase_at).days)
        mix = (
            {method: self.return_methods.get(method, 0) / self.return_count for method in RETURN_METHODS}
            if self.return_count
            else {}
        )
        horizon = now - RECENT_RETURNS_WINDOW
        return Traits(
            total_spend=self.total_spend,
            order_count=self.order_count,
            average_order_value=_share(self.total_spend, self.order_count),
            last_purchase_at=self.last_purchase_at,
            days_since_last_purchase=days_since,
            # Capped: refunds for orders placed before the history began can exceed the recorded spend.
            return_rate=min(1.0, _share(self.refunded, self.total_spend)) if self.refunded else 0.0,
            return_count=self.return_count,
            return_method_mix=mix,
            full_price_share=_share(self.full_price_units, self.units),
            shipping_paid_share=_share(self.shipping_paid_orders, self.shipped_orders),
            loyalty_tier=self.loyalty_tier,
            loyalty_points=self.loyalty_points,
            open_service_issues=sum(len(times) for times in self.open_issues.values()),
            service_contacts=self.service_contacts,
            last_viewed=tuple(self.last_viewed),
            cart=tuple(self.cart_lines()),
            preferences=Preferences(self.sizes, self.colours, self.shipping_method),
            recent_returns=len(self.return_times) - bisect_left(self.return_times, horizon),
            net_value=self.total_spend - self.refunded,
        )

    # ------------------------------------------------------------------ storage document

    def to_document(self) -> dict[str, Any]:
        """The state as a document for the JSON column; datetimes are left to the serializer (orjson writes them
        as RFC 3339 in C, several times faster than `isoformat` per list entry on the ingest path)."""
        return {
            "first_seen_at": (self.first_seen_at),
            "total_spend": self.total_spend,
            "order_count": self.order_count,
            "last_purchase_at": (self.last_purchase_at),
            "units": self.units,
            "full_price_units": self.full_price_units,
            "shipped_orders": self.shipped_orders,
            "shipping_paid_orders": self.shipping_paid_orders,
            "refunded": self.refunded,
            "return_count": self.return_count,
            "return_methods": self.return_methods,
            "return_times": list(self.return_times),
            "loyalty_tier": self.loyalty_tier,
            "loyalty_tier_at": (self.loyalty_tier_at),
            "loyalty_points": self.loyalty_points,
            "service_contacts": self.service_contacts,
            "open_issues": {reason: list(times) for reason, times in self.open_issues.items()},
            "early_resolutions": {reason: list(times) for reason, times in self.early_resolutions.items()},
            "last_viewed": [[v.sku, v.dwell_seconds, v.viewed_at] for v in self.last_viewed],
            "cart_cleared_at": (self.cart_cleared_at),
            "cart_log": [[e.at, e.sku, e.delta, e.unit_price] for e in self.cart_log],
            "sizes": list(self.sizes),
            "sizes_at": (self.sizes_at),
            "colours": list(self.colours),
            "colours_at": (self.colours_at),
            "shipping_method": self.shipping_method,
            "shipping_method_at": (self.shipping_method_at),
            "offer_responses": self.offer_responses,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> ProfileState:
        def times(values: list[str]) -> list[datetime]:
            return [datetime.fromisoformat(v) for v in values]

        return cls(
            first_seen_at=_time(doc.get("first_seen_at")),
            total_spend=doc.get("total_spend", 0.0),
            order_count=doc.get("order_count", 0),
            last_purchase_at=_time(doc.get("last_purchase_at")),
            units=doc.get("units", 0),
            full_price_units=doc.get("full_price_units", 0),
            shipped_orders=doc.get("shipped_orders", 0),
            shipping_paid_orders=doc.get("shipping_paid_orders", 0),
            refunded=doc.get("refunded", 0.0),
            return_count=doc.get("return_count", 0),
            return_methods=dict(doc.get("return_methods", {})),
            return_times=times(doc.get("return_times", [])),
            loyalty_tier=doc.get("loyalty_tier", 0),
            loyalty_tier_at=_time(doc.get("loyalty_tier_at")),
            loyalty_points=doc.get("loyalty_points", 0),
            service_contacts=doc.get("service_contacts", 0),
            open_issues={reason: times(ts) for reason, ts in doc.get("open_issues", {}).items()},
            early_resolutions={reason: times(ts) for reason, ts in doc.get("early_resolutions", {}).items()},
            last_viewed=[
                ViewedSku(sku, dwell, datetime.fromisoformat(at)) for sku, dwell, at in doc.get("last_viewed", [])
            ],
            cart_cleared_at=_time(doc.get("cart_cleared_at")),
            cart_log=[
                CartEntry(datetime.fromisoformat(at), sku, delta, price)
                for at, sku, delta, price in doc.get("cart_log", [])
            ],
            sizes=tuple(doc.get("sizes", ())),
            sizes_at=_time(doc.get("sizes_at")),
            colours=tuple(doc.get("colours", ())),
            colours_at=_time(doc.get("colours_at")),
            shipping_method=doc.get("shipping_method", ""),
            shipping_method_at=_time(doc.get("shipping_method_at")),
            offer_responses=dict(doc.get("offer_responses", {})),
        )
