"""The pure part of Decide after the I/O: stock gate, associate actions, arbitration, channel experience, trace.

The orchestrator fetches the customer, screens the catalogue (`eligibility.screen`), calls scoring and inventory,
then hands everything to `conclude`, which decides without any I/O. The trace records every considered offer
with the rule that removed it or the factors that ranked it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from services.decision.catalogue import Catalogue
from services.decision.domain.arbitration import THOMPSON, ArbitrationPolicy, Scored, arbitrate
from services.decision.domain.eligibility import Screening, cart_products
from services.decision.domain.experience import (
    DEFAULT_BUY_NOW_HOLD,
    associate_actions,
    buy_now_headline,
    buy_now_script,
    offer_script,
    stock_hints,
    web_prefill,
)
from services.decision.domain.experiment import CONTROL, TREATMENT
from services.decision.domain.model import BUY_NOW, Candidate, Context, CustomerView, DecidedOffer, Scarce, StockView
from services.decision.domain.scarcity import scarcity_verdict
from services.decision.domain.stock import stock_location, stock_verdict
from services.decision.features import RequestContext


@dataclass(frozen=True)
class Scores:
    """What the scoring service answered: the model version and each offer's acceptance probability."""

    model_version: str
    probabilities: Mapping[str, float]


#: Why a decision returned no offer (DecideResponse.no_offer_reason and the trace).
NOTHING_ELIGIBLE = "nothing_eligible"  # every offer was removed by a rule, stock or consent
BELOW_MIN_PRIORITY = "below_min_priority"  # candidates were left, but none cleared the minimum priority
CONTROL_GROUP = "control_group"  # the customer is in the control group, which gets no offer


@dataclass(frozen=True)
class Conclusion:
    offers: tuple[DecidedOffer, ...]
    trace: dict[str, Any]
    #: Empty when offers were returned; else NOTHING_ELIGIBLE or BELOW_MIN_PRIORITY.
    no_offer_reason: str = ""
    #: The catalogue this decision was made from (a hot reload may swap it while the decision runs).
    catalogue_version: str = ""


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
    arm: str = TREATMENT,
    control_offer: str = "random",
    rng: random.Random | None = None,
    buy_now_hold: timedelta = DEFAULT_BUY_NOW_HOLD,
) -> Conclusion:
    """Steps 6-8 and the trace; `scores` / `stock` None means that dependency failed (fallbacks apply).

    In the control arm arbitration is skipped: one candidate drawn uniformly (`control_offer` "random", with its
    probability logged), or none ("none")."""
    location = stock_location(channel, ctx, warehouse_id)
    removed = dict(screening.removed)
    details = dict(screening.details)
    candidates: list[Candidate] = []
    for offer in screening.eligible:
        keep, stock_code = stock_verdict(offer, stock, location, ctx, catalogue)
        if not keep:
            removed[offer.id] = stock_code
            continue
        scarcity = scarcity_verdict(offer, stock, location, customer, catalogue) if stock is not None else None
        if scarcity is not None and not scarcity.keep:
            removed[offer.id] = scarcity.code
            details[offer.id] = {"why": scarcity.why}
            continue
        probability = scores.probabilities.get(offer.id) if scores is not None else None
        if probability is None:
            propensity, source = offer.base_propensity, "rule_propensity"
        else:
            propensity, source = probability, "model_propensity"
        scarce_code = scarcity.code if scarcity is not None else ""
        reasons = tuple(code for code in (stock_code, scarce_code, "consented" if offer.marketing else "") if code)
        # Kept while scarce: the last units are this customer's to take, so the experience is a buy-now.
        scarce = (
            Scarce(scarcity.code, scarcity.units, scarcity.location_id, customer.traits.loyalty_tier, scarcity.why)
            if scarcity is not None and offer.type != "pre_order"  # a pre-order is not there to buy now
            else None
        )
        candidates.append(Candidate(offer, propensity, source, reasons, scarce=scarce))
    if channel == "pos":
        candidates.extend(associate_actions(ctx, customer, catalogue, stock, ctx.store_id, warehouse_id))

    in_cart = cart_products(ctx, customer, catalogue)
    control: dict[str, Any] = {}
    if arm == CONTROL:
        pool = sorted(candidates, key=lambda c: c.offer.id)
        if control_offer == "random" and pool:
            chosen = (rng or random.Random()).choice(pool)
            control = {"control_pick": chosen.offer.id, "control_probability": 1.0 / len(pool)}
            candidates = [chosen]
        else:
            control = {"control_pick": "", "control_probability": 1.0}
            candidates = []
        removed.update((c.offer.id, "control_not_drawn") for c in pool if c not in candidates)
        policy = ArbitrationPolicy(policy.long_dwell_seconds, 0.0, policy.weights)  # the draw is not filtered
        max_offers = 1
    arbitration = arbitrate(candidates, ctx, customer, in_cart, catalogue, policy, max_offers, rng)
    if control:
        probability = {oid: control["control_probability"] for oid in arbitration.shown_probability}
    else:
        probability = arbitration.shown_probability
    offers = tuple(
        replace(
            _present(rank, item, channel, ctx, customer, catalogue, stock, warehouse_id, buy_now_hold),
            probability=probability.get(item.candidate.offer.id, 1.0),
        )
        for rank, item in enumerate(arbitration.ranked, start=1)
    )

    considered: list[dict[str, Any]] = [
        {"offer_id": oid, "removed": reason, **details.get(oid, {})} for oid, reason in removed.items()
    ]
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
            "value_factor": item.value_factor,
            "value_factor_source": item.value_source,
            "score": item.score,
        }
        if item.candidate.scarce is not None:  # why it is (or would have been) a buy-now, for Explain
            scarce = item.candidate.scarce
            entry["why"] = f"buy now ({scarce.code}): {scarce.why}"
            entry["buy_now"] = {
                "code": scarce.code,
                "units_left": scarce.units_left,
                "location_id": scarce.location_id,
                "hold_seconds": int(buy_now_hold.total_seconds()),
            }
        if offer.id in ranks:
            entry["rank"] = ranks[offer.id]
            entry["probability"] = probability.get(offer.id, 1.0)
        else:
            entry["dropped"] = arbitration.dropped[offer.id]
        considered.append(entry)
    trace: dict[str, Any] = {"considered": considered, "min_priority": policy.min_priority, "arm": arm, **control}
    if arbitration.first_probability:
        trace["exploration"] = {
            "policy": policy.exploration,
            "epsilon": policy.epsilon,
            "explored": arbitration.explored,
            "first_probability": arbitration.first_probability,
        }
        if policy.exploration == THOMPSON:  # the prior behind the (exact, quadrature) probabilities
            trace["exploration"]["strength"] = policy.thompson_strength
    no_offer_reason = ""
    if not offers:
        if arm == CONTROL and control_offer != "random":
            no_offer_reason = CONTROL_GROUP
        else:
            no_offer_reason = BELOW_MIN_PRIORITY if arbitration.scored else NOTHING_ELIGIBLE
        trace["no_offer_reason"] = no_offer_reason
    return Conclusion(offers, trace, no_offer_reason, catalogue.version)


def _present(
    rank: int,
    item: Scored,
    channel: str,
    ctx: Context,
    customer: CustomerView,
    catalogue: Catalogue,
    stock: StockView | None,
    warehouse_id: str,
    buy_now_hold: timedelta = DEFAULT_BUY_NOW_HOLD,
) -> DecidedOffer:
    candidate = item.candidate
    offer = candidate.offer
    prefill = script = None
    headline = ""
    hints = candidate.stock
    buy_now = False
    if channel == "web":
        prefill = web_prefill(offer, ctx, customer, catalogue, stock, warehouse_id, candidate.scarce, buy_now_hold)
        if prefill is not None and prefill.action == BUY_NOW and candidate.scarce is not None:
            headline, buy_now = buy_now_headline(candidate.scarce), True
    else:
        script = offer_script(offer, channel, catalogue, stock, ctx.store_id)
        if candidate.scarce is not None:
            script = f"{buy_now_script(candidate.scarce, offer, channel, ctx.call_reason)} {script}"
            buy_now = True
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
        reason_codes=(
            candidate.propensity_source,
            *candidate.reasons,
            *item.weight_codes,
            *((item.value_source,) if item.value_source else ()),
            *(("buy_now",) if buy_now else ()),
        ),
        prefill=prefill,
        script=script or "",
        stock=hints,
        headline=headline,
    )
