"""Step 7 of Decide: score = propensity x value x lever x context weight; one offer per product; rank and cut.

The context weight starts at 1 and is multiplied for what the customer is doing or always does:

| code                | factor | when                                                                         |
|---------------------|--------|------------------------------------------------------------------------------|
| `long_dwell`        | x1.5   | the request's dwell on the offer's product is >= long_dwell_seconds           |
| `pays_for_shipping` | x1.3   | a free-shipping offer, and the customer paid shipping on >= 50% of orders     |
| `cart_match`        | x1.2   | the offer's product is in the cart (a nudge to check out)                      |
| `pays_full_price`   | x0.7   | a discount, and >= 80% of the customer's units were bought at full price      |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.decision.catalogue import Catalogue, Offer
from services.decision.domain.model import Candidate, Context, CustomerView

SHIPPING_PAID_THRESHOLD = 0.5
FULL_PRICE_THRESHOLD = 0.8


@dataclass(frozen=True)
class Weights:
    long_dwell: float = 1.5
    pays_for_shipping: float = 1.3
    cart_match: float = 1.2
    pays_full_price: float = 0.7


@dataclass(frozen=True)
class ArbitrationPolicy:
    long_dwell_seconds: float = 30.0
    min_priority: float = 0.0
    weights: Weights = Weights()


def context_weight(
    offer: Offer,
    ctx: Context,
    customer: CustomerView,
    in_cart: frozenset[str],
    catalogue: Catalogue,
    policy: ArbitrationPolicy,
) -> tuple[float, tuple[str, ...]]:
    """The offer's context weight and the codes of the factors that made it."""
    weights = policy.weights
    traits = customer.traits
    weight = 1.0
    codes: list[str] = []
    if (
        offer.product_id is not None
        and ctx.dwell_seconds >= policy.long_dwell_seconds
        and catalogue.product_of_sku.get(ctx.sku) == offer.product_id
    ):
        weight *= weights.long_dwell
        codes.append("long_dwell")
    if offer.type == "free_shipping" and traits.shipping_paid_share >= SHIPPING_PAID_THRESHOLD:
        weight *= weights.pays_for_shipping
        codes.append("pays_for_shipping")
    if offer.product_id is not None and offer.product_id in in_cart:
        weight *= weights.cart_match
        codes.append("cart_match")
    if offer.type == "discount" and traits.full_price_share >= FULL_PRICE_THRESHOLD:
        weight *= weights.pays_full_price
        codes.append("pays_full_price")
    return weight, tuple(codes)


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    context_weight: float
    weight_codes: tuple[str, ...]
    score: float


@dataclass(frozen=True)
class Arbitration:
    ranked: tuple[Scored, ...]
    #: Every candidate with its factors, best first (ranked and dropped alike), for the trace.
    scored: tuple[Scored, ...]
    #: Offer id -> why a scored candidate was not returned ("below_min_priority", "diversity", "beyond_max_offers").
    dropped: dict[str, str]


def arbitrate(
    candidates: Iterable[Candidate],
    ctx: Context,
    customer: CustomerView,
    in_cart: frozenset[str],
    catalogue: Catalogue,
    policy: ArbitrationPolicy,
    max_offers: int,
) -> Arbitration:
    scored: list[Scored] = []
    for candidate in candidates:
        offer = candidate.offer
        weight, codes = context_weight(offer, ctx, customer, in_cart, catalogue, policy)
        score = candidate.propensity * offer.value * offer.lever * weight
        scored.append(Scored(candidate, weight, codes, score))
    scored.sort(key=lambda s: (-s.score, s.candidate.offer.id))  # ties broken by id: the same input ranks the same
    ranked: list[Scored] = []
    dropped: dict[str, str] = {}
    taken_keys: set[str] = set()
    for item in scored:
        offer_id = item.candidate.offer.id
        if item.score < policy.min_priority:
            dropped[offer_id] = "below_min_priority"
        elif item.candidate.key in taken_keys:
            dropped[offer_id] = "diversity"  # a better offer for the same product is already in
        elif len(ranked) >= max_offers:
            dropped[offer_id] = "beyond_max_offers"
        else:
            ranked.append(item)
            taken_keys.add(item.candidate.key)
    return Arbitration(tuple(ranked), tuple(scored), dropped)
