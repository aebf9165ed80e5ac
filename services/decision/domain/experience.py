"""Step 8 of Decide: what each channel shows — a web cart pre-fill, POS scripts, stock hints and associate actions.

Associate actions are synthesised here when the SKU a POS customer wants is sold out in their store; they are
service actions (no marketing consent needed) ranked together with the catalogue's offers.

A scarce offer kept for a loyal or high-value customer (domain/scarcity.py) is a **buy-now**: on the web its
pre-fill is an express checkout (BUY_NOW, units left, hold time) with a plain headline; at POS the associate is
told to sell or reserve it now; in the call centre the agent's script offers it first on a scarce-item call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import timedelta

from services.decision.catalogue import Catalogue, Offer, Product, Variant
from services.decision.domain.model import (
    BUY_NOW,
    Candidate,
    Context,
    CustomerView,
    Preferences,
    Prefill,
    Scarce,
    StockHint,
    StockView,
)
from services.decision.domain.scarcity import SCARCE_LOYAL
from services.decision.domain.stock import alternative_products

DEFAULT_SHIPPING_METHOD = "standard"
#: Offer types whose script does not talk about this store's shelf (nothing there to sell, or it says so itself).
SHELFLESS = ("pre_order", "service_action")
MAX_STOCK_HINTS = 4

#: Prior acceptance of each associate action (no model scores them: they are synthesised after scoring).
PRIOR_SAME_PRODUCT_ALTERNATIVE = 0.5  # another size or colour of the wanted product, on the shelf now
PRIOR_SAME_CATEGORY_ALTERNATIVE = 0.3  # another product of the same category, on the shelf now
PRIOR_SHIP_TO_HOME = 0.4
PRIOR_RESERVE_NEARBY = 0.3
#: Share of the price the retailer keeps on a sale an action saves: the action's value.
ACTION_MARGIN = 0.3
#: How long the web's express checkout is held for the customer unless the settings say otherwise.
DEFAULT_BUY_NOW_HOLD = timedelta(minutes=15)
#: The call reason of a scarce-item campaign call (as in domain/priority.py).
SCARCE_ITEM_CALL = "scarce_item"


def describe(variant: Variant) -> str:
    parts = [variant.colour, f"size {variant.size}" if variant.size else ""]
    return " ".join(p for p in parts if p) or variant.sku


def choose_variant(
    product: Product, available: Callable[[str], bool] | None, prefs: Preferences, prefer_sku: str = ""
) -> Variant | None:
    """The variant to put in the cart: `prefer_sku` if available, else the best match of the customer's preferred
    sizes then colours (earlier preferences first), else the first available variant in catalogue order.
    `available` None means any variant will do (a pre-order)."""
    usable = [v for v in product.variants if available is None or available(v.sku)]
    if not usable:
        return None
    for variant in usable:
        if variant.sku == prefer_sku:
            return variant
    # min keeps the first of equals: catalogue order when no preference matches.
    return min(usable, key=lambda v: preference_rank(v, prefs))


def preference_rank(variant: Variant, prefs: Preferences) -> tuple[int, int]:
    """Lower is better: the position of the variant's size, then colour, in the customer's preferences."""
    sizes, colours = prefs.sizes, prefs.colours
    size_rank = sizes.index(variant.size) if variant.size in sizes else len(sizes)
    colour_rank = colours.index(variant.colour) if variant.colour in colours else len(colours)
    return size_rank, colour_rank


def web_prefill(
    offer: Offer,
    ctx: Context,
    customer: CustomerView,
    catalogue: Catalogue,
    stock: StockView | None,
    warehouse: str,
    scarce: Scarce | None = None,
    hold: timedelta = DEFAULT_BUY_NOW_HOLD,
) -> Prefill | None:
    """A one-click cart line for the offer's product, or for the viewed product when the offer has none; an express
    checkout (BUY_NOW) of the customer's in-stock variant when the offer is scarce and kept for them."""
    product_id = offer.product_id or catalogue.product_of_sku.get(ctx.sku)
    if product_id is None:
        return None
    product = catalogue.products[product_id]
    prefs = customer.traits.preferences
    covered = offer.skus if offer.product_id == product_id else frozenset()  # empty: every variant
    if offer.type == "pre_order":
        # Pre-order the sold-out variant viewed (any variant will do otherwise).
        variant = choose_variant(product, (lambda sku: sku in covered) if covered else None, prefs, prefer_sku=ctx.sku)
    elif stock is None:
        return None
    else:
        variant = choose_variant(
            product, lambda sku: (not covered or sku in covered) and stock.units(sku, warehouse) > 0, prefs
        )
    if variant is None:
        return None
    prefill = Prefill(
        sku=variant.sku,
        quantity=1,
        size=variant.size,
        colour=variant.colour,
        shipping_method=prefs.shipping_method or DEFAULT_SHIPPING_METHOD,
    )
    if scarce is not None and offer.type != "pre_order":
        prefill = replace(prefill, action=BUY_NOW, units_left=scarce.units_left, hold_seconds=int(hold.total_seconds()))
    return prefill


def kept_for(scarce: Scarce) -> str:
    """Who the last units are kept for, as the customer reads it."""
    return f"{scarce.tier} members" if scarce.code == SCARCE_LOYAL else "our best customers"


def buy_now_headline(scarce: Scarce) -> str:
    """The web line of a buy-now, e.g. "Only 3 left — reserved for gold members: buy now."."""
    return f"Only {scarce.units_left} left — reserved for {kept_for(scarce)}: buy now."


def buy_now_script(scarce: Scarce, offer: Offer, channel: str, call_reason: str = "") -> str:
    """What the associate or agent says first about a buy-now."""
    who = f"loyal {scarce.tier} customer" if scarce.code == SCARCE_LOYAL else "high-value customer"
    if channel == "pos":
        return f"{scarce.units_left} left in store — {who}: sell it now, or reserve one for them."
    lead = "Offer this first" if call_reason.strip().lower() == SCARCE_ITEM_CALL else "Offer to order it now"
    return (
        f"{lead}: {offer.name} — only {scarce.units_left} left, kept for {kept_for(scarce)}; "
        "they can buy it now on this call."
    )


def stock_hints(product: Product, stock: StockView | None, store_id: str) -> tuple[StockHint, ...]:
    """Where the product's variants are: this store first, then the other locations, most units first."""
    if stock is None:
        return ()
    levels = [level for v in product.variants for level in stock.levels(v.sku) if level.on_hand > 0]
    levels.sort(key=lambda lv: (lv.location_id != store_id, -lv.on_hand, lv.sku, lv.location_id))
    return tuple(StockHint(lv.sku, lv.location_id, lv.on_hand) for lv in levels[:MAX_STOCK_HINTS])


def offer_script(offer: Offer, channel: str, catalogue: Catalogue, stock: StockView | None, store_id: str) -> str:
    """What the associate or agent says: the catalogue's script, else the offer's name, plus shelf stock at POS."""
    script = offer.script or f"Offer: {offer.name}."
    if channel == "pos" and offer.product_id is not None and stock is not None and offer.type not in SHELFLESS:
        product = catalogue.products[offer.product_id]
        units = sum(stock.units(v.sku, store_id) for v in product.variants)
        script = f"{script} {product.name}: {units} in this store."
    return script


def _action(
    action_id: str,
    prior: float,
    name: str,
    product: Product,
    script: str,
    hints: Iterable[StockHint],
    reasons: tuple[str, ...],
) -> Candidate:
    offer = Offer(
        id=action_id,
        name=name,
        type="service_action",
        channels=("pos",),
        marketing=False,
        value=round(product.price * ACTION_MARGIN, 2),
        lever=1.0,
        base_propensity=prior,
        product_id=product.product_id,
        script=script,
        allow_same_type=True,  # fulfilment options for one sold-out item are alternatives, shown together
    )
    # Each action is its own fulfilment option, so actions do not compete with each other for the product slot.
    return Candidate(offer, prior, "rule_propensity", reasons, diversity_key=action_id, stock=tuple(hints))


def associate_actions(
    ctx: Context, customer: CustomerView, catalogue: Catalogue, stock: StockView | None, store_id: str, warehouse: str
) -> list[Candidate]:
    """POS actions when the SKU the customer wants has no units in their store (none when it does)."""
    product_id = catalogue.product_of_sku.get(ctx.sku) if ctx.sku else None
    if product_id is None or stock is None or stock.units(ctx.sku, store_id) > 0:
        return []
    product = catalogue.products[product_id]
    wanted = next(v for v in product.variants if v.sku == ctx.sku)
    actions: list[Candidate] = []

    alternative = _in_store_alternative(product, wanted, customer.traits.preferences, catalogue, stock, store_id)
    if alternative is not None:
        alt_product, variant, units = alternative
        same = alt_product.product_id == product_id
        sold_out = describe(wanted) if same else product.name
        script = (
            f"{sold_out} is sold out here; {'offer' if same else 'suggest'} {alt_product.name} "
            f"in {describe(variant)} ({units} on the shelf)."
        )
        actions.append(
            _action(
                "action:in_store_alternative",
                PRIOR_SAME_PRODUCT_ALTERNATIVE if same else PRIOR_SAME_CATEGORY_ALTERNATIVE,
                f"In-store alternative: {alt_product.name} {describe(variant)}",
                alt_product,
                script,
                [StockHint(variant.sku, store_id, units)],
                ("sku_out_of_stock_here", "in_stock"),
            )
        )

    warehouse_units = stock.units(ctx.sku, warehouse)
    if warehouse_units > 0:
        method = customer.traits.preferences.shipping_method or DEFAULT_SHIPPING_METHOD
        actions.append(
            _action(
                "action:ship_to_home",
                PRIOR_SHIP_TO_HOME,
                f"Ship to home: {product.name} {describe(wanted)}",
                product,
                f"Order {product.name} in {describe(wanted)} here and ship it home ({method} shipping); "
                f"{warehouse_units} in the warehouse.",
                [StockHint(ctx.sku, warehouse, warehouse_units)],
                ("sku_out_of_stock_here", "in_stock_warehouse"),
            )
        )

    nearby = [
        lv
        for lv in stock.levels(ctx.sku)
        if lv.location_kind == "store" and lv.location_id != store_id and lv.on_hand > 0
    ]
    if nearby:
        best = min(nearby, key=lambda lv: (-lv.on_hand, lv.location_id))
        actions.append(
            _action(
                "action:reserve_nearby",
                PRIOR_RESERVE_NEARBY,
                f"Reserve at store {best.location_id}: {product.name} {describe(wanted)}",
                product,
                f"Reserve {product.name} in {describe(wanted)} at store {best.location_id} "
                f"({best.on_hand} available there) for pick-up.",
                [StockHint(ctx.sku, best.location_id, best.on_hand)],
                ("sku_out_of_stock_here", "in_stock_nearby"),
            )
        )
    return actions


def _in_store_alternative(
    product: Product, wanted: Variant, prefs: Preferences, catalogue: Catalogue, stock: StockView, store_id: str
) -> tuple[Product, Variant, int] | None:
    """Another size/colour of the same product on this store's shelf, else a same-category product.

    Keeping the wanted size matters most (fit), then the customer's preferred sizes and colours, then stock.
    """
    same_category = [catalogue.products[pid] for pid in alternative_products(catalogue, product.product_id)]
    for products in ([product], same_category):
        options = [
            (p, v, units)
            for p in products
            for v in p.variants
            if v.sku != wanted.sku and (units := stock.units(v.sku, store_id)) > 0
        ]
        if options:
            return min(options, key=lambda o: (o[1].size != wanted.size, preference_rank(o[1], prefs), -o[2]))
    return None
