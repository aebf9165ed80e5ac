"""The arbitration's value factor: a retention offer is worth more for a customer the lifetime-value model expects
to keep spending.

An offer's `value` is what accepting it earns now (its margin or expected revenue). For a retention-type offer (a
loyalty perk, a service action) that undercounts: what it protects is the customer's future spend. So its value is
scaled by

    value_factor = 1 + min(LTV_FACTOR_CAP - 1, predicted_ltv / LTV_FACTOR_SCALE)

where `predicted_ltv` is the predicted 12-month net spend (the profile's lifetime-value model trait): 1.0 for no
predicted spend, 1.5 at 500 a year, and at most 2.0 (from 1,000 a year). The cap keeps one outlier prediction from
filling every slate with perks. Other offer types, and customers the model never scored, keep 1.0.
"""

from __future__ import annotations

from services.decision.catalogue import Offer
from services.decision.domain.model import CustomerView

RETENTION_TYPES = frozenset({"loyalty_perk", "service_action"})
LTV_FACTOR_SCALE = 1000.0
LTV_FACTOR_CAP = 2.0


def value_factor(offer: Offer, customer: CustomerView) -> tuple[float, str]:
    """The multiplier of the offer's value and where it came from ("predicted_ltv:<model version>", or "" for 1.0)."""
    predicted = customer.traits.predicted_ltv
    if offer.type not in RETENTION_TYPES or predicted is None or not predicted.value > 0:
        return 1.0, ""
    factor = 1.0 + min(LTV_FACTOR_CAP - 1.0, predicted.value / LTV_FACTOR_SCALE)
    return factor, f"predicted_ltv:{predicted.model_version}"
