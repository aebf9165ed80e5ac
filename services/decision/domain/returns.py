"""Do not offer what the customer just sent back.

The profile keeps the SKUs a customer returned in the last 90 days, with the category when the return line
reported one (`Traits.recently_returned`). The decision narrows them to its own window (`RETURNED_WITHIN_DAYS`,
default 30) and resolves each SKU against its catalogue: the product it belongs to, and that product's category
when the return did not say. Then:

- an offer for a returned product, or for a product of a returned category, is removed (trace code
  `recently_returned`, with what was returned and when) unless it is a service action (fixing an order or an
  exchange is exactly what a customer who returned something may need);
- PrioritizeCall's `avoid` tells the agent "Do not offer <category>: returned on <date>." per returned category.

Offers without a product (free shipping, loyalty perks) are not about any category, so they stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.decision.catalogue import Catalogue, Offer
from services.decision.domain.model import CustomerView

RECENTLY_RETURNED = "recently_returned"
DEFAULT_RETURNED_WITHIN = timedelta(days=30)
#: Offer types that help with a return rather than sell: never removed for one.
EXEMPT_TYPES = frozenset({"service_action"})


@dataclass(frozen=True)
class Returned:
    """What the customer returned within the decision's window, newest return per product and per category."""

    within: timedelta = DEFAULT_RETURNED_WITHIN
    #: product id -> (the returned SKU, when).
    products: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    #: category -> when an item of it was last returned.
    categories: dict[str, datetime] = field(default_factory=dict)
    #: Every SKU returned in the window, newest first (also SKUs the catalogue does not know).
    skus: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.skus)


NOTHING_RETURNED = Returned()


def recently_returned(customer: CustomerView, catalogue: Catalogue, now: datetime, within: timedelta) -> Returned:
    """The customer's returns in the last `within` (nothing when `within` is zero: the filter is off)."""
    if within <= timedelta(0) or not customer.traits.recently_returned:
        return Returned(within)
    since = now - within
    products: dict[str, tuple[str, datetime]] = {}
    categories: dict[str, datetime] = {}
    skus: list[str] = []
    # Newest first (the profile's order), so the first entry per product / category is its newest return.
    for item in sorted(customer.traits.recently_returned, key=lambda i: i.returned_at, reverse=True):
        if item.returned_at < since:
            continue
        skus.append(item.sku)
        product_id = catalogue.product_of_sku.get(item.sku)
        if product_id is not None:
            products.setdefault(product_id, (item.sku, item.returned_at))
        category = item.category or (catalogue.products[product_id].category if product_id is not None else "")
        if category:
            categories.setdefault(category, item.returned_at)
    return Returned(within, products, categories, tuple(skus))


def returned_conflict(offer: Offer, returned: Returned, catalogue: Catalogue) -> str | None:
    """Why the offer must not be shown to a customer who returned this (None when it may be)."""
    if not returned or offer.type in EXEMPT_TYPES or offer.product_id is None:
        return None
    days = returned.within.days
    product = catalogue.products[offer.product_id]
    if offer.product_id in returned.products:
        sku, at = returned.products[offer.product_id]
        return f"returned {product.name} ({sku}) on {at:%Y-%m-%d}, within {days} days"
    if product.category in returned.categories:
        at = returned.categories[product.category]
        return f"returned a {product.category} item on {at:%Y-%m-%d}, within {days} days"
    return None


def avoid_lines(returned: Returned) -> tuple[str, ...]:
    """The agent's "do not offer" lines, newest return first."""
    ordered = sorted(returned.categories.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    return tuple(f"Do not offer {category}: returned on {at:%Y-%m-%d}." for category, at in ordered)
