"""The pure part of Decide after the I/O: stock gate, associate actions, arbitration, channel experience, trace.

The orchestrator fetches the customer, screens the catalogue (`eligibility.screen`), calls scoring and inventory,
then hands everything to `conclude`, which decides without any I/O. The trace records every considered offer
with the rule that removed it or the factors that ranked it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.decision.catalogue import Catalogue
from services.decision.domain.arbitration import ArbitrationPolicy, Scored, arbitrate
from services.decision.domain.eligibility import Screening, cart_products
from services.decision.domain.experience import associate_actions, offer_script, stock_hints, web_prefill
from services.decision.domain.model import Candidate, Context, CustomerView, DecidedOffer, StockView
from services.decision.domain.stock import stock_location, stock_verdict
from services.decision.features import RequestContext


@dataclass(frozen=True)
class Scores:
    """What the scoring service answered: the model version and each offer's acceptance probability."""

    model_version: str
    probabilities: Mapping[str, float]


@dataclass(frozen=True)
class Conclusion:
    offers: tuple[DecidedOffer, ...]
    trace: dict[str, Any]


def request_context(channel: str, ctx: Context) -> RequestContext:
    """The context features of a request, computed one way for scoring and for the logged request summary."""
    return RequestContext(
        channel=channel,
        sku=ctx.sku,
        dwell_seconds=ctx.dwell_seconds,
        cart_value=sum(line.quantity * line.unit_price for line in ctx.cart),
        cart_items=sum(line.quantity for line in ctx.cart),
    )


def conclude(
    *,
    catalogue: Catalogue,
    channel: str,
    ctx: Context,
    customer: CustomerView,
    screening: Screening,
    scores: Scores | None,
    stock: StockView | None,
    warehouse_id: str,
    policy: ArbitrationPolicy,
    max_offers: int,
) -> Conclusion:
    """Steps 6-8 and the trace; `scores` / `stock` None means that dependency failed (fallbacks apply)."""
    location = stock_location(channel, ctx, warehouse_id)
    removed = dict(screening.removed)
    candidates: list[Candidate] = []
    for offer in screening.eligible:
        keep, stock_code = stock_verdict(offer, stock, location, ctx, catalogue)
        if not keep:
            removed[offer.id] = stock_code
            continue
        probability = scores.probabilities.get(offer.id) if scores is not None else None
        if probability is None:
            propensity, source = offer.base_propensity, "rule_propensity"
        else:
            propensity, source = probability, "model_propensity"
        reasons = tuple(code for code in (stock_code, "consented" if offer.marketing else "") if code)
        candidates.append(Candidate(offer, propensity, source, reasons))
    if channel == "pos":
        candidates.extend(associate_actions(ctx, customer, catalogue, stock, ctx.store_id, warehouse_id))

    in_cart = cart_products(ctx, customer, catalogue)
    arbitration = arbitrate(candidates, ctx, customer, in_cart, catalogue, policy, max_offers)
    offers = tuple(
        _present(rank, item, channel, ctx, customer, catalogue, stock, warehouse_id)
        for rank, item in enumerate(arbitration.ranked, start=1)
    )

    considered: list[dict[str, Any]] = [{"offer_id": oid, "removed": reason} for oid, reason in removed.items()]
    ranks = {o.offer_id: o.rank for o in offers}
    for item in arbitration.scored:
        offer = item.candidate.offer
        entry: dict[str, Any] = {
            "offer_id": offer.id,
            "propensity": item.candidate.propensity,
            "source": item.candidate.propensity_source,
            "value": offer.value,
            "lever": offer.lever,
            "context_weight": item.context_weight,
            "factors": list(item.weight_codes),
            "score": item.score,
        }
        if offer.id in ranks:
            entry["rank"] = ranks[offer.id]
        else:
            entry["dropped"] = arbitration.dropped[offer.id]
        considered.append(entry)
    trace: dict[str, Any] = {"considered": considered}
    if not offers:
        trace["empty_reason"] = "no_offer_cleared_minimum"
    return Conclusion(offers, trace)


def _present(
    rank: int,
    item: Scored,
    channel: str,
    ctx: Context,
    customer: CustomerView,
    catalogue: Catalogue,
    stock: StockView | None,
    warehouse_id: str,
) -> DecidedOffer:
    candidate = item.candidate
    offer = candidate.offer
    prefill = script = None
    hints = candidate.stock
    if channel == "web":
        prefill = web_prefill(offer, ctx, customer, catalogue, stock, warehouse_id)
    else:
        script = offer_script(offer, channel, catalogue, stock, ctx.store_id)
        if channel == "pos" and not hints and offer.product_id is not None:
            hints = stock_hints(catalogue.products[offer.product_id], stock, ctx.store_id)
    return DecidedOffer(
        offer_id=offer.id,
        name=offer.name,
        type=offer.type,
        rank=rank,
        score=item.score,
        propensity=candidate.propensity,
        value=offer.value,
        lever=offer.lever,
        reason_codes=(candidate.propensity_source, *candidate.reasons, *item.weight_codes),
        prefill=prefill,
        script=script or "",
        stock=hints,
    )
