"""Scarcity: while an offer's product runs low, low-value customers lose the offer and loyal ones keep it first.

An offer with a `scarcity` policy (see catalogue.Scarcity) is scarce when its product has fewer than `below_units`
units at the fulfilling location (the stock the decision already looked up). Then the customer keeps it when their
tier is a loyal one (`scarce_loyal`: the last units go to them first) or their value percentile reaches the
minimum (`scarce_high_value`); everyone else loses it (`scarce_low_value`, recorded in the trace with why).
A kept scarce offer becomes a buy-now in the channel experience (domain/experience.py `buy_now`).

The value percentile is the highest percentile in the policy's `value_percentiles` table whose net value the
customer's net value reaches (0 below the lowest): a step function over a few numbers the operator takes from
the profile report, so the decision needs no query over the whole customer base.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.decision.catalogue import Catalogue, Offer, Scarcity
from services.decision.domain.model import CustomerView, StockView

SCARCE_LOYAL = "scarce_loyal"
SCARCE_HIGH_VALUE = "scarce_high_value"
SCARCE_LOW_VALUE = "scarce_low_value"


@dataclass(frozen=True)
class ScarcityVerdict:
    keep: bool
    #: SCARCE_LOYAL, SCARCE_HIGH_VALUE or SCARCE_LOW_VALUE.
    code: str
    why: str
    #: Units of the product left at the location (what a buy-now tells the customer).
    units: int = 0
    location_id: str = ""


def value_percentile(net_value: float, policy: Scarcity) -> float:
    """The highest listed percentile whose net value the customer reaches, 0 below the lowest."""
    return max((p for p, value in policy.value_percentiles if net_value >= value), default=0.0)


def scarcity_verdict(
    offer: Offer, stock: StockView, location_id: str, customer: CustomerView, catalogue: Catalogue
) -> ScarcityVerdict | None:
    """None when the offer has no scarcity policy or its product is not scarce here; else who keeps it and why."""
    policy = offer.scarcity
    if policy is None or offer.product_id is None:
        return None
    units = sum(stock.units(v.sku, location_id) for v in catalogue.variants_of(offer))
    if units >= policy.below_units:
        return None
    scarce = f"{units} unit(s) left at {location_id} (scarce below {policy.below_units})"
    tier = customer.traits.loyalty_tier
    if tier in policy.loyal_tiers:
        return ScarcityVerdict(True, SCARCE_LOYAL, f"{scarce}; {tier} tier goes first", units, location_id)
    percentile = value_percentile(customer.traits.net_value, policy)
    if percentile >= policy.min_value_percentile:
        return ScarcityVerdict(
            True, SCARCE_HIGH_VALUE, f"{scarce}; value percentile {percentile:g}", units, location_id
        )
    return ScarcityVerdict(
        False,
        SCARCE_LOW_VALUE,
        f"{scarce}; value percentile {percentile:g} below {policy.min_value_percentile:g} and tier {tier} not loyal",
        units,
        location_id,
    )
