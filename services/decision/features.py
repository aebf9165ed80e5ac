"""Offer and context features joined to the customer's features for each candidate row.

Shared by online scoring (the decision service builds a `Candidate` per offer) and offline training (the demo
trainer builds the same rows), so a model always sees features computed one way.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.decision.catalogue import CHANNELS, OFFER_TYPES, Catalogue, Offer


@dataclass(frozen=True)
class RequestContext:
    """The parts of a request's context that shape offer features."""

    channel: str  # one of catalogue.CHANNELS
    sku: str = ""
    dwell_seconds: float = 0.0
    cart_value: float = 0.0
    cart_items: int = 0


OFFER_FEATURE_NAMES: tuple[str, ...] = (
    *(f"offer_type_{t}" for t in OFFER_TYPES),
    "offer_discount_pct",
    "offer_value",
    "offer_price",
    "offer_has_product",
    *(f"ctx_channel_{c}" for c in CHANNELS),
    "ctx_dwell_seconds",
    "ctx_cart_value",
    "ctx_cart_items",
    "ctx_viewing_offer_product",
)


def offer_feature_values(offer: Offer, context: RequestContext, catalogue: Catalogue) -> list[float]:
    """The offer/context features of one candidate row, in OFFER_FEATURE_NAMES order (what `Decide` sends scoring,
    as one column block for all candidates)."""
    product = catalogue.products.get(offer.product_id) if offer.product_id else None
    viewing = catalogue.product_of_sku.get(context.sku) if context.sku else None
    return [
        *(float(offer.type == t) for t in OFFER_TYPES),
        offer.discount_pct,
        offer.value,
        product.price if product else 0.0,
        float(product is not None),
        *(float(context.channel == c) for c in CHANNELS),
        context.dwell_seconds,
        context.cart_value,
        float(context.cart_items),
        float(product is not None and viewing == product.product_id),
    ]


def offer_features(offer: Offer, context: RequestContext, catalogue: Catalogue) -> dict[str, float]:
    """The same row by name (training sets, tools)."""
    return dict(zip(OFFER_FEATURE_NAMES, offer_feature_values(offer, context, catalogue), strict=True))
