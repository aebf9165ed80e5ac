"""Step 4 of Decide: which catalogue offers may be shown at all, before any stock or score is known.

Every removed offer gets one reason (the first rule it fails), recorded in the decision's trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.decision.catalogue import Catalogue, Offer
from services.decision.domain import rules as cel_rules
from services.decision.domain.model import TIER_RANK, Context, CustomerView
from services.decision.domain.returns import (
    DEFAULT_RETURNED_WITHIN,
    NOTHING_RETURNED,
    RECENTLY_RETURNED,
    Returned,
    recently_returned,
    returned_conflict,
)

MARKETING = "marketing"


def cart_products(ctx: Context, customer: CustomerView, catalogue: Catalogue) -> frozenset[str]:
    """Products in the cart: the one the request carries, else the profile's last known cart."""
    skus = [line.sku for line in ctx.cart] if ctx.cart else customer.traits.cart_skus
    return frozenset(pid for sku in skus if (pid := catalogue.product_of_sku.get(sku)) is not None)


def ineligibility(
    offer: Offer, channel: str, ctx: Context, customer: CustomerView, in_cart: frozenset[str], now: datetime
) -> str | None:
    """Why the offer may not be shown, or None when it may."""
    if channel not in offer.channels:
        return "channel"
    if offer.placements and ctx.placement and ctx.placement not in offer.placements:
        return "placement"
    if offer.valid_from is not None and now < offer.valid_from:
        return "not_yet_valid"
    if offer.valid_to is not None and now >= offer.valid_to:
        return "expired"
    rules = offer.eligibility
    traits = customer.traits
    if TIER_RANK[traits.loyalty_tier] < TIER_RANK[rules.min_tier]:
        return "min_tier"
    if traits.total_spend < rules.min_total_spend:
        return "min_total_spend"
    if traits.order_count < rules.min_orders:
        return "min_orders"
    if traits.return_rate > rules.max_return_rate:
        return "max_return_rate"
    if traits.shipping_paid_share < rules.min_shipping_paid_share:
        return "min_shipping_paid_share"
    if rules.pages and channel == "web" and ctx.page not in rules.pages:
        return "page"
    if rules.call_reasons and channel == "call_center" and ctx.call_reason not in rules.call_reasons:
        return "call_reason"
    if rules.requires_cart and not in_cart:
        return "requires_cart"
    if offer.type == "cross_sell" and offer.product_id in in_cart:
        return "already_in_cart"  # selling what is already in the cart is no cross-sell
    if offer.marketing and not customer.allows(MARKETING, channel):
        # Unknown consent (identity down) is treated as no consent: never market without permission.
        return "consent_unknown" if customer.consents is None else "no_marketing_consent"
    return None


@dataclass(frozen=True)
class Screening:
    eligible: tuple[Offer, ...]
    #: Offer id -> the rule that removed it (a code such as "min_tier", or "rule:<id>" for a CEL rule).
    removed: dict[str, str]
    #: Offer id -> more about the removal for the trace (a CEL rule's stage and why).
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


def rule_facts(
    channel: str,
    ctx: Context,
    customer: CustomerView,
    catalogue: Catalogue,
    now: datetime,
    returned: Returned = NOTHING_RETURNED,
) -> Any:
    """The CEL variables of one decision (see domain/rules.py)."""
    viewed = catalogue.product_of_sku.get(ctx.sku, "") if ctx.sku else ""
    in_cart = sorted(cart_products(ctx, customer, catalogue))
    return cel_rules.facts(
        known=customer.known,
        traits=customer.traits,
        features=customer.features if catalogue.rules_read_features else None,
        channel=channel,
        page=ctx.page,
        sku=ctx.sku,
        product_id=viewed,
        category=catalogue.products[viewed].category if viewed else "",
        dwell_seconds=ctx.dwell_seconds,
        cart_value=sum(line.quantity * line.unit_price for line in ctx.cart),
        cart_items=sum(line.quantity for line in ctx.cart),
        cart_products=in_cart,
        cart_categories=sorted({catalogue.products[pid].category for pid in in_cart}),
        store_id=ctx.store_id,
        call_reason=ctx.call_reason,
        placement=ctx.placement,
        now=now,
        returned_skus=list(returned.skus),
        returned_products=sorted(returned.products),
        returned_categories=sorted(returned.categories),
    )


def screen(
    catalogue: Catalogue,
    channel: str,
    ctx: Context,
    customer: CustomerView,
    now: datetime,
    returned_within: timedelta = DEFAULT_RETURNED_WITHIN,
) -> Screening:
    in_cart = cart_products(ctx, customer, catalogue)
    returned = recently_returned(customer, catalogue, now, returned_within)
    eligible: list[Offer] = []
    removed: dict[str, str] = {}
    details: dict[str, dict[str, Any]] = {}
    facts = None  # built once, and only when an offer that got this far has CEL rules
    for offer in catalogue.offers:
        reason = ineligibility(offer, channel, ctx, customer, in_cart, now)
        if reason is None and (why_returned := returned_conflict(offer, returned, catalogue)) is not None:
            reason = RECENTLY_RETURNED
            details[offer.id] = {"why": why_returned}
        if reason is None and offer.rules:
            if facts is None:
                facts = rule_facts(channel, ctx, customer, catalogue, now, returned)
            failed = cel_rules.failing_rule(offer.rules, facts)
            if failed is not None:
                rule, why = failed
                reason = f"rule:{rule.id}"
                details[offer.id] = {"stage": rule.stage, "why": why, "expression": rule.expression}
        if reason is None:
            eligible.append(offer)
        else:
            removed[offer.id] = reason
    return Screening(tuple(eligible), removed, details)


def without(screening: Screening, removals: dict[str, tuple[str, str]]) -> Screening:
    """The screening with more offers removed (contact policy, budget): offer id -> (trace code, why)."""
    if not removals:
        return screening
    eligible = tuple(o for o in screening.eligible if o.id not in removals)
    removed = dict(screening.removed)
    details = dict(screening.details)
    for offer in screening.eligible:
        if offer.id in removals:
            code, why = removals[offer.id]
            removed[offer.id] = code
            details[offer.id] = {"why": why}
    return Screening(eligible, removed, details)
