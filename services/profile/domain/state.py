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
- return times are kept for the last RECENT_RETURNS_WINDOW so `recent_returns` is computed at read time;
- returned SKUs keep, per SKU, the newest return time (and the category a return line reported) for the last
  RETURNED_ITEMS_WINDOW, at most RETURNED_ITEMS_LIMIT SKUs (the newest): the same whatever the arrival order,
  because a SKU dropped for the limit is older than every kept one and only ever gets older;
- purchases (time, amount) are kept for the last SPEND_WINDOWS[-1] days, so spend and orders over 30/90/365 days
  are summed at read time over a bounded list; refunds and write-offs likewise, for the net spend windows (a
  state stored before those kept them counts only later ones); the last few view times feed purchase intent;
- favourite categories, brands, sizes and colours and the preferred channel are counters (bounded to
  FAVOURITES_LIMIT keys by dropping the smallest), read as their top entries;
- model traits keep, per use case, the prediction with the newest scoring time (a late re-run of an older model
  version does not replace a newer one).

The state is stored as a JSON document (`to_document` / `from_document`); missing keys read as defaults so new
traits can be added without a data migration.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.profile.domain.events import (
    RETURN_METHODS,
    AcceptedEvent,
    CartAbandoned,
    CartChange,
    Checkout,
    LedgerEntry,
    Login,
    LoyaltyChange,
    ModelPrediction,
    OfferResponse,
    PageView,
    PreferenceUpdate,
    ProductReturn,
    ProductView,
    Purchase,
    Search,
    ServiceContact,
    StoreVisit,
)

#: The fold's own version: bump it when a release changes a trait's arithmetic or starts keeping history a trait
#: needs. A state folded by an older release (stored without it, or with a lower one) counts only the events since,
#: so the profile service rebuilds it from its events in the background (`LineageFollower.refold_outdated`).
FOLD_VERSION = 1
RECENT_RETURNS_WINDOW = timedelta(days=30)
#: Returned SKUs are kept this long (a reader such as the decision narrows it with its own window) ...
RETURNED_ITEMS_WINDOW = timedelta(days=90)
#: ... and at most this many of them, the most recently returned.
RETURNED_ITEMS_LIMIT = 20
LAST_VIEWED_LIMIT = 10
CART_LOG_LIMIT = 100
#: A compacted cart keeps at most this many lines (the most recently touched): a real cart is far smaller, and the
#: bound keeps compaction to once per 50+ changes and the stored state small for a bot that adds forever.
CART_LINES_LIMIT = 50
EARLY_RESOLUTIONS_LIMIT = 10
#: The spend / order-count windows, in days.
SPEND_WINDOWS = (30, 90, 365)
#: Keys kept per favourites counter (categories, brands, sizes, colours, channels).
FAVOURITES_LIMIT = 50
#: Entries returned per favourites trait.
FAVOURITES_SHOWN = 3
RECENT_SEARCHES_LIMIT = 5
#: Purchase intent looks at this much recent behaviour.
INTENT_WINDOW = timedelta(hours=24)
INTENT_VIEWS_LIMIT = 20


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
class ReturnedItem:
    """The newest return of one SKU; `category` is "" when no return line of it reported one."""

    sku: str
    category: str
    returned_at: datetime


@dataclass(frozen=True, slots=True)
class ModelTrait:
    """The newest prediction of one model use case (e.g. predicted lifetime value) for the customer."""

    value: float
    model_name: str
    model_version: str
    scored_at: datetime


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
    spend_30d: float = 0.0
    spend_90d: float = 0.0
    spend_365d: float = 0.0
    orders_30d: int = 0
    orders_90d: int = 0
    orders_365d: int = 0
    return_rate_by_count: float = 0.0
    favourite_categories: tuple[str, ...] = ()
    favourite_brands: tuple[str, ...] = ()
    favourite_sizes: tuple[str, ...] = ()
    favourite_colours: tuple[str, ...] = ()
    preferred_channel: str = ""
    searches: int = 0
    recent_searches: tuple[str, ...] = ()
    cart_abandonments: int = 0
    checkouts: int = 0
    store_visits: int = 0
    last_store_id: str = ""
    logins: int = 0
    last_login_at: datetime | None = None
    ledger_refunds: float = 0.0
    write_offs: float = 0.0
    purchase_intent: float = 0.0
    #: Orders per 30 days since the customer was first seen (a first month counts as a whole one).
    purchase_frequency: float = 0.0
    #: Spend over the window minus the refunds and write-offs booked in it (what net_value deducts), by the day
    #: each happened: a return reverses spend in the windows it falls in, so these can go below zero.
    net_spend_30d: float = 0.0
    net_spend_90d: float = 0.0
    net_spend_365d: float = 0.0
    #: SKUs returned in the last RETURNED_ITEMS_WINDOW, newest first.
    recently_returned: tuple[ReturnedItem, ...] = ()


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _newer(at: datetime, than: datetime | None) -> bool:
    return than is None or at >= than


def _count(counter: dict[str, int], key: str, amount: int) -> None:
    """Add to a bounded counter; beyond FAVOURITES_LIMIT keys the smallest (a rarely bought value) is dropped."""
    if not key:
        return
    counter[key] = counter.get(key, 0) + amount
    if len(counter) > FAVOURITES_LIMIT:
        del counter[min(counter, key=counter.__getitem__)]


def _insert(times: list[float], values: list[Any], at: float, value: Any, limit: int | None) -> None:
    """Insert into parallel lists kept sorted by time, keeping the newest `limit` entries."""
    index = bisect_right(times, at)
    times.insert(index, at)
    values.insert(index, value)
    if limit is not None and len(times) > limit:
        del times[:-limit], values[:-limit]


def _windowed(times: list[float], amounts: list[float], at: datetime, amount: float, now: datetime) -> None:
    """Add an amount dated `at` to parallel lists covering the longest spend window, dropping what fell out of it
    (for good: time only moves forward)."""
    horizon = (now - timedelta(days=SPEND_WINDOWS[-1])).timestamp()
    when = at.timestamp()
    if when >= horizon:
        _insert(times, amounts, when, amount, None)
    expired = bisect_left(times, horizon)
    if expired:
        del times[:expired], amounts[:expired]


def _top(counter: dict[str, int]) -> tuple[str, ...]:
    """The most counted keys, most first; ties by name so the answer is stable."""
    return tuple(sorted(counter, key=lambda key: (-counter[key], key))[:FAVOURITES_SHOWN])


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
    returned_items: dict[str, ReturnedItem] = field(default_factory=dict)  # SKU -> its newest return
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
    # purchases in the longest spend window as parallel lists (POSIX time sorted, amount): plain numbers, stored
    # as they are, because converting entries back from the document on every batch would slow loading a state
    purchase_times: list[float] = field(default_factory=list)
    purchase_amounts: list[float] = field(default_factory=list)
    # refunds (returns, ledger) and write-offs in the longest spend window, the same way: the net spend windows
    deduction_times: list[float] = field(default_factory=list)
    deduction_amounts: list[float] = field(default_factory=list)
    returned_units: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    brands: dict[str, int] = field(default_factory=dict)
    sizes_bought: dict[str, int] = field(default_factory=dict)
    colours_bought: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    # other touchpoints
    searches: int = 0
    search_times: list[float] = field(default_factory=list)  # POSIX times, sorted, of...
    search_queries: list[str] = field(default_factory=list)  # ...the latest queries
    cart_abandonments: int = 0
    checkouts: int = 0
    store_visits: int = 0
    last_store_id: str = ""
    last_store_visit_at: datetime | None = None
    logins: int = 0
    last_login_at: datetime | None = None
    view_times: list[float] = field(default_factory=list)  # POSIX times of the latest product views
    # back-office ledger
    ledger_refunds: float = 0.0
    write_offs: float = 0.0
    # model use case -> its newest prediction (written back by batch scoring; not a feature input)
    model_traits: dict[str, ModelTrait] = field(default_factory=dict)
    # segment name -> since when a member (maintained by the service's segment evaluation, not by `apply`)
    segments: dict[str, datetime] = field(default_factory=dict)
    #: The FOLD_VERSION of the release that folded the state from its first event (kept by `apply`: folding a new
    #: event onto an outdated state leaves it outdated).
    fold_version: int = FOLD_VERSION

    # ------------------------------------------------------------------ folding

    def apply(self, event: AcceptedEvent, now: datetime) -> None:
        """Fold one new event into the state (`now` bounds the kept return times)."""
        at = event.occurred_at
        if self.first_seen_at is None or at < self.first_seen_at:
            self.first_seen_at = at
        match event.payload:
            case Purchase() as purchase:
                self._purchase(purchase, at, now)
            case ProductReturn() as product_return:
                self._return(product_return, at, now)
            case CartChange() as change:
                self._cart_change(change, at)
            case ProductView(sku=sku, dwell_seconds=dwell):
                self._viewed(ViewedSku(sku, dwell, at))
                insort(self.view_times, at.timestamp())
                del self.view_times[:-INTENT_VIEWS_LIMIT]
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
            case Search(query=query):
                self.searches += 1
                _insert(self.search_times, self.search_queries, at.timestamp(), query, RECENT_SEARCHES_LIMIT)
            case CartAbandoned():
                self.cart_abandonments += 1
            case Checkout():
                self.checkouts += 1
            case StoreVisit(store_id=store_id):
                self.store_visits += 1
                if _newer(at, self.last_store_visit_at):
                    self.last_store_id, self.last_store_visit_at = store_id, at
            case Login():
                self.logins += 1
                if _newer(at, self.last_login_at):
                    self.last_login_at = at
            case LedgerEntry(type=kind, amount=amount):
                if kind == "refund":
                    self.ledger_refunds += amount
                else:
                    self.write_offs += amount
                self._deduct(amount, at, now)
            case ModelPrediction(use_case=use_case) as prediction:
                kept = self.model_traits.get(use_case)
                # Ties go to the higher version: re-runs at the same instant converge whatever the arrival order.
                if kept is None or (at, prediction.model_version) >= (kept.scored_at, kept.model_version):
                    self.model_traits[use_case] = ModelTrait(
                        prediction.value, prediction.model_name, prediction.model_version, at
                    )
            case PageView():
                pass  # only recent activity and first_seen_at

    def _purchase(self, purchase: Purchase, at: datetime, now: datetime) -> None:
        total = purchase.total
        self.total_spend += total
        _windowed(self.purchase_times, self.purchase_amounts, at, total, now)
        _count(self.channels, purchase.channel, 1)
        self.order_count += 1
        if self.last_purchase_at is None or at > self.last_purchase_at:
            self.last_purchase_at = at
        for line in purchase.lines:
            self.units += line.quantity
            # list_price 0 means the producer does not know it: counted as full price.
            if not line.list_price or line.unit_price >= line.list_price:
                self.full_price_units += line.quantity
            _count(self.categories, line.category, line.quantity)
            _count(self.brands, line.brand, line.quantity)
            _count(self.sizes_bought, line.size, line.quantity)
            _count(self.colours_bought, line.colour, line.quantity)
        if purchase.shipped:
            self.shipped_orders += 1
            if purchase.shipping_fee > 0:
                self.shipping_paid_orders += 1
        self._clear_cart(at)  # the cart was checked out

    def _deduct(self, amount: float, at: datetime, now: datetime) -> None:
        """A refund or write-off, for the net spend windows (a zero would only lengthen the document)."""
        if amount:
            _windowed(self.deduction_times, self.deduction_amounts, at, amount, now)

    def _return(self, product_return: ProductReturn, at: datetime, now: datetime) -> None:
        self.refunded += product_return.refunded
        self._deduct(product_return.refunded, at, now)
        self.return_count += 1
        self.returned_units += sum(line.quantity for line in product_return.lines)
        self.return_methods[product_return.method] = self.return_methods.get(product_return.method, 0) + 1
        horizon = now - RECENT_RETURNS_WINDOW
        if at >= horizon:
            insort(self.return_times, at)
        # Times before the window can never count again: time only moves forward.
        del self.return_times[: bisect_left(self.return_times, horizon)]
        self._returned_items(product_return, at, now)

    def _returned_items(self, product_return: ProductReturn, at: datetime, now: datetime) -> None:
        horizon = now - RETURNED_ITEMS_WINDOW
        items = self.returned_items
        if at >= horizon:
            for line in product_return.lines:
                kept = items.get(line.sku)
                if kept is None or at > kept.returned_at or (at == kept.returned_at and not kept.category):
                    # A newer return replaces the entry; a category stays known once a line reported it.
                    category = line.category or (kept.category if kept is not None else "")
                    items[line.sku] = ReturnedItem(line.sku, category, at)
                elif not kept.category and line.category:
                    items[line.sku] = ReturnedItem(line.sku, line.category, kept.returned_at)
        expired = [sku for sku, item in items.items() if item.returned_at < horizon]
        for sku in expired:
            del items[sku]
        if len(items) > RETURNED_ITEMS_LIMIT:
            newest = sorted(items.values(), key=lambda item: (item.returned_at, item.sku))[-RETURNED_ITEMS_LIMIT:]
            self.returned_items = {item.sku: item for item in newest}

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
        windows: dict[int, tuple[float, int, float]] = {}
        for days in SPEND_WINDOWS:
            start = (now - timedelta(days=days)).timestamp()
            since = bisect_left(self.purchase_times, start)
            spend = sum(self.purchase_amounts[since:])
            deducted = sum(self.deduction_amounts[bisect_left(self.deduction_times, start):])
            windows[days] = (spend, len(self.purchase_times) - since, spend - deducted)
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
            net_value=self.total_spend - self.refunded - self.ledger_refunds - self.write_offs,
            spend_30d=windows[30][0],
            spend_90d=windows[90][0],
            spend_365d=windows[365][0],
            orders_30d=windows[30][1],
            orders_90d=windows[90][1],
            orders_365d=windows[365][1],
            return_rate_by_count=min(1.0, _share(self.returned_units, self.units)),
            favourite_categories=_top(self.categories),
            favourite_brands=_top(self.brands),
            favourite_sizes=_top(self.sizes_bought),
            favourite_colours=_top(self.colours_bought),
            preferred_channel=(_top(self.channels) or ("",))[0],
            searches=self.searches,
            recent_searches=tuple(reversed(self.search_queries)),
            cart_abandonments=self.cart_abandonments,
            checkouts=self.checkouts,
            store_visits=self.store_visits,
            last_store_id=self.last_store_id,
            logins=self.logins,
            last_login_at=self.last_login_at,
            ledger_refunds=self.ledger_refunds,
            write_offs=self.write_offs,
            purchase_intent=self.purchase_intent(now),
            purchase_frequency=self.purchase_frequency(now),
            net_spend_30d=windows[30][2],
            net_spend_90d=windows[90][2],
            net_spend_365d=windows[365][2],
            recently_returned=tuple(
                sorted(
                    (item for item in self.returned_items.values() if item.returned_at >= now - RETURNED_ITEMS_WINDOW),
                    key=lambda item: (-item.returned_at.timestamp(), item.sku),  # newest first, then by SKU
                )
            ),
        )

    def purchase_frequency(self, now: datetime) -> float:
        """Orders per 30 days of the relationship (since first seen), at least one month long so that a new
        customer's first order is not an extreme rate."""
        if not self.order_count:
            return 0.0
        tenure_days = (now - self.first_seen_at).total_seconds() / 86_400 if self.first_seen_at else 0.0
        return round(self.order_count / max(1.0, tenure_days / 30), 6)

    def purchase_intent(self, now: datetime) -> float:
        """0..1 from the last INTENT_WINDOW: product views (5+ saturate), the longest dwell (2 minutes
        saturates), repeated views of one SKU, and a non-empty cart touched in the window."""
        since = now - INTENT_WINDOW
        views = len(self.view_times) - bisect_left(self.view_times, since.timestamp())
        dwell = max((view.dwell_seconds for view in self.last_viewed if view.viewed_at >= since), default=0.0)
        recent_skus = [view.sku for view in self.last_viewed if view.viewed_at >= since]
        # More views than SKUs means a SKU was viewed again, but only while the bounded last_viewed still holds
        # every SKU viewed in the window (eleven SKUs viewed once each are no repeat).
        every_sku_known = len(self.last_viewed) < LAST_VIEWED_LIMIT or self.last_viewed[-1].viewed_at < since
        repeated = 1.0 if recent_skus and every_sku_known and views > len(recent_skus) else 0.0
        cart_active = 1.0 if self.cart_log and self.cart_log[-1].at >= since and self.cart_lines() else 0.0
        score = 0.3 * min(views / 5, 1.0) + 0.2 * min(dwell / 120, 1.0) + 0.2 * repeated + 0.3 * cart_active
        return round(score, 6)

    # ------------------------------------------------------------------ storage document

    def to_document(self) -> dict[str, Any]:
        """The state as a document for the JSON column; datetimes are left to the serializer (orjson writes them
        as RFC 3339 in C, several times faster than `isoformat` per list entry on the ingest path)."""
        document = {
            "fold_version": self.fold_version,
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
        # The newer traits are written only when set: most customers use few of them, and a smaller document is
        # cheaper to encode here and to decode on the next batch (a missing key reads as its default).
        extra = (
            ("purchase_times", self.purchase_times),
            ("purchase_amounts", self.purchase_amounts),
            ("deduction_times", self.deduction_times),
            ("deduction_amounts", self.deduction_amounts),
            ("returned_units", self.returned_units),
            ("categories", self.categories),
            ("brands", self.brands),
            ("sizes_bought", self.sizes_bought),
            ("colours_bought", self.colours_bought),
            ("channels", self.channels),
            ("searches", self.searches),
            ("search_times", self.search_times),
            ("search_queries", self.search_queries),
            ("cart_abandonments", self.cart_abandonments),
            ("checkouts", self.checkouts),
            ("store_visits", self.store_visits),
            ("last_store_id", self.last_store_id),
            ("last_store_visit_at", self.last_store_visit_at),
            ("logins", self.logins),
            ("last_login_at", self.last_login_at),
            ("view_times", self.view_times),
            ("ledger_refunds", self.ledger_refunds),
            ("write_offs", self.write_offs),
            ("segments", self.segments),
            (
                "returned_items",
                [[item.sku, item.category, item.returned_at] for item in self.returned_items.values()],
            ),
            (
                "model_traits",
                {
                    use_case: [trait.value, trait.model_name, trait.model_version, trait.scored_at]
                    for use_case, trait in self.model_traits.items()
                },
            ),
        )
        document.update([(key, value) for key, value in extra if value])
        return document

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> ProfileState:
        """The state stored by `to_document`. Runs once per customer per batch on the ingest path, so empty
        containers skip their conversions and the freshly decoded containers are used without copying."""
        get = doc.get
        iso = datetime.fromisoformat
        open_issues = get("open_issues")
        early = get("early_resolutions")
        last_viewed = get("last_viewed")
        cart_log = get("cart_log")
        return_times = get("return_times")
        segments = get("segments")
        model_traits = get("model_traits")
        returned_items = get("returned_items")
        return cls(
            fold_version=get("fold_version", 0),  # stored before fold versions: outdated
            first_seen_at=_time(get("first_seen_at")),
            total_spend=get("total_spend", 0.0),
            order_count=get("order_count", 0),
            last_purchase_at=_time(get("last_purchase_at")),
            units=get("units", 0),
            full_price_units=get("full_price_units", 0),
            shipped_orders=get("shipped_orders", 0),
            shipping_paid_orders=get("shipping_paid_orders", 0),
            refunded=get("refunded", 0.0),
            return_count=get("return_count", 0),
            return_methods=get("return_methods") or {},
            return_times=[iso(v) for v in return_times] if return_times else [],
            returned_items=(
                {sku: ReturnedItem(sku, category, iso(at)) for sku, category, at in returned_items}
                if returned_items
                else {}
            ),
            loyalty_tier=get("loyalty_tier", 0),
            loyalty_tier_at=_time(get("loyalty_tier_at")),
            loyalty_points=get("loyalty_points", 0),
            service_contacts=get("service_contacts", 0),
            open_issues={reason: [iso(v) for v in ts] for reason, ts in open_issues.items()} if open_issues else {},
            early_resolutions={reason: [iso(v) for v in ts] for reason, ts in early.items()} if early else {},
            last_viewed=[ViewedSku(sku, dwell, iso(at)) for sku, dwell, at in last_viewed] if last_viewed else [],
            cart_cleared_at=_time(get("cart_cleared_at")),
            cart_log=[CartEntry(iso(at), sku, delta, price) for at, sku, delta, price in cart_log] if cart_log else [],
            sizes=tuple(get("sizes") or ()),
            sizes_at=_time(get("sizes_at")),
            colours=tuple(get("colours") or ()),
            colours_at=_time(get("colours_at")),
            shipping_method=get("shipping_method", ""),
            shipping_method_at=_time(get("shipping_method_at")),
            offer_responses=get("offer_responses") or {},
            purchase_times=get("purchase_times") or [],
            purchase_amounts=get("purchase_amounts") or [],
            deduction_times=get("deduction_times") or [],
            deduction_amounts=get("deduction_amounts") or [],
            returned_units=get("returned_units", 0),
            categories=get("categories") or {},
            brands=get("brands") or {},
            sizes_bought=get("sizes_bought") or {},
            colours_bought=get("colours_bought") or {},
            channels=get("channels") or {},
            searches=get("searches", 0),
            search_times=get("search_times") or [],
            search_queries=get("search_queries") or [],
            cart_abandonments=get("cart_abandonments", 0),
            checkouts=get("checkouts", 0),
            store_visits=get("store_visits", 0),
            last_store_id=get("last_store_id", ""),
            last_store_visit_at=_time(get("last_store_visit_at")),
            logins=get("logins", 0),
            last_login_at=_time(get("last_login_at")),
            view_times=get("view_times") or [],
            ledger_refunds=get("ledger_refunds", 0.0),
            write_offs=get("write_offs", 0.0),
            segments={name: iso(since) for name, since in segments.items()} if segments else {},
            model_traits=(
                {
                    use_case: ModelTrait(value, name, version, iso(at))
                    for use_case, (value, name, version, at) in model_traits.items()
                }
                if model_traits
                else {}
            ),
        )
