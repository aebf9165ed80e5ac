"""Step 6 of Decide: stock gates product-bound offers; a sold-out product or variant turns into a pre-order.

Stock is checked at the location that would fulfil the offer: the warehouse for web and call-centre offers, the
customer's store for POS.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from services.decision.catalogue import Catalogue, Offer
from services.decision.domain.model import Context, StockView

#: At most this many same-category products are looked up as in-store alternatives (keeps the lookup small).
MAX_ALTERNATIVE_PRODUCTS = 12


def stock_location(channel: str, ctx: Context, warehouse_id: str) -> str:
    return ctx.store_id if channel == "pos" else warehouse_id


def products_to_check(offers: Iterable[Offer], channel: str, ctx: Context, catalogue: Catalogue) -> list[str]:
    """Products whose stock this decision needs: the offers', the viewed SKU's and, at POS, its alternatives."""
    wanted = dict.fromkeys(o.product_id for o in offers if o.product_id)
    viewed = catalogue.product_of_sku.get(ctx.sku) if ctx.sku else None
    if viewed is not None:
        wanted[viewed] = None
        if channel == "pos":
            wanted.update(dict.fromkeys(alternative_products(catalogue, viewed)))
    return list(wanted)


def alternative_products(catalogue: Catalogue, product_id: str) -> list[str]:
    """Other products of the same category, in catalogue order, as in-store alternatives."""
    category = catalogue.products[product_id].category
    same = (pid for pid, p in catalogue.products.items() if p.category == category and pid != product_id)
    return list(itertools.islice(same, MAX_ALTERNATIVE_PRODUCTS))


def stock_verdict(
    offer: Offer, stock: StockView | None, location_id: str, ctx: Context, catalogue: Catalogue
) -> tuple[bool, str]:
    """(keep, reason): the reason is a trace/reason code either way ("in_stock", "out_of_stock", ...)."""
    if offer.product_id is None:
        return True, ""
    if stock is None:
        return False, "stock_unknown"  # inventory unavailable: never promise stock we cannot see
    in_stock = (
        any(stock.units(v.sku, location_id) > 0 for v in catalogue.variants_of(offer))
        if offer.skus
        else stock.product_in_stock(offer.product_id, location_id)
    )
    if offer.type == "pre_order":
        # The customer is looking at a sold-out variant of this product: that size/colour becomes a pre-order.
        viewed_sold_out = (
            catalogue.product_of_sku.get(ctx.sku) == offer.product_id
            and (not offer.skus or ctx.sku in offer.skus)
            and stock.units(ctx.sku, location_id) <= 0
        )
        if in_stock and not viewed_sold_out:
            return False, "in_stock_no_pre_order"
        return True, "pre_order_sold_out"
    return (True, "in_stock") if in_stock else (False, "out_of_stock")
