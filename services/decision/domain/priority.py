"""PrioritizeCall's queue priority: 0-100 from documented components, a tier, and the codes that contributed.

| component          | points                                             | reason code                     |
|--------------------|----------------------------------------------------|---------------------------------|
| base               | 15 for a known customer, 10 for an unknown caller  | `new_or_unknown_caller` (10)    |
| value (model)      | by predicted 12-month net spend (lifetime-value    | `high_predicted_value:<version>` |
|                    | model trait): >= 2,000: 30, >= 1,000: 25, >= 500:  | when >= 20 (≥ 500 a year)       |
|                    | 20, >= 200: 12, >= 50: 6, else 0                   |                                 |
| value (no model)   | 10 x log10(1 + net_value / 10), at most 30         | `high_value` when >= 20 (≈1,000) |
| loyalty tier       | bronze 3, silver 8, gold 15, platinum 20           | `<tier>_tier`                   |
| orders             | 1 per order, at most 10                            | `frequent_buyer` when >= 5      |
| open issues        | 8 per open service issue, at most 16               | `open_issue`                    |
| recent returns     | 4 per return in 30 days, at most 8                 | `recent_returns`                |
| churn risk         | the larger of: call reason (cancel 15, complaint   | `churn_risk_call_reason` when   |
|                    | 12, others 0) and the churn model's trait (20 x    | the reason scores;              |
|                    | probability); no trait: the call reason alone      | `churn_risk_model:<version>`    |
|                    |                                                    | when the probability is >= 0.5  |
| scarce-item call   | 15 for gold/platinum when the reason is a scarce-  | `scarce_item_loyal`             |
|                    | item campaign ("scarce_item"): loyal ones go first |                                 |

Tier: VIP from 70, PRIORITY from 45, else STANDARD. A caller with neither a profile nor orders is "unknown".
The model rows use the traits nightly rescoring writes to the profile (`nextbest model rescore lifetime_value` /
`churn_risk`); a customer never scored falls back to the rule rows. Predicted value replaces net value rather than
adding to it: a big spender who has lapsed should not outrank one the model expects to keep buying. The churn
component takes the larger of the two signals, so a likely churner calling to cancel is not counted twice.
"""

from __future__ import annotations

import math

from services.decision.domain.model import CallPriority, CustomerView

BASE_KNOWN = 15.0
BASE_UNKNOWN = 10.0
VALUE_MAX = 30.0
HIGH_VALUE_POINTS = 20.0
TIER_POINTS = {"none": 0.0, "bronze": 3.0, "silver": 8.0, "gold": 15.0, "platinum": 20.0}
ORDERS_MAX = 10.0
FREQUENT_BUYER_ORDERS = 5
OPEN_ISSUE_POINTS, OPEN_ISSUE_MAX = 8.0, 16.0
RECENT_RETURN_POINTS, RECENT_RETURN_MAX = 4.0, 8.0
CHURN_RISK_CALL_REASONS = {"cancel": 15.0, "complaint": 12.0}
#: (lower bound of predicted 12-month net spend, points), highest first.
PREDICTED_VALUE_BANDS = ((2000.0, 30.0), (1000.0, 25.0), (500.0, 20.0), (200.0, 12.0), (50.0, 6.0))
CHURN_MODEL_POINTS = 20.0  # x the predicted probability
CHURN_MODEL_REASON_FROM = 0.5
#: Call reasons of a scarce-item campaign (the IVR's "calling about <viral item>"): loyal customers jump the queue.
SCARCE_ITEM_CALL_REASONS = frozenset({"scarce_item"})
SCARCE_ITEM_LOYAL_TIERS = frozenset({"gold", "platinum"})
SCARCE_ITEM_LOYAL_POINTS = 15.0
VIP_FROM = 70
PRIORITY_FROM = 45


def call_priority(customer: CustomerView, call_reason: str) -> CallPriority:
    traits = customer.traits
    reasons: list[str] = []
    known = customer.known and (traits.order_count > 0 or traits.net_value > 0 or traits.loyalty_tier != "none")
    if known:
        points = BASE_KNOWN
    else:
        points = BASE_UNKNOWN
        reasons.append("new_or_unknown_caller")

    predicted = traits.predicted_ltv
    if predicted is not None:
        value_points = next((p for floor, p in PREDICTED_VALUE_BANDS if predicted.value >= floor), 0.0)
        value_reason = f"high_predicted_value:{predicted.model_version}"
    else:
        value_points = min(VALUE_MAX, 10.0 * math.log10(1.0 + max(0.0, traits.net_value) / 10.0))
        value_reason = "high_value"
    points += value_points
    if value_points >= HIGH_VALUE_POINTS:
        reasons.append(value_reason)

    tier_points = TIER_POINTS[traits.loyalty_tier]
    points += tier_points
    if tier_points > 0:
        reasons.append(f"{traits.loyalty_tier}_tier")

    points += min(ORDERS_MAX, float(traits.order_count))
    if traits.order_count >= FREQUENT_BUYER_ORDERS:
        reasons.append("frequent_buyer")

    if traits.open_service_issues > 0:
        points += min(OPEN_ISSUE_MAX, OPEN_ISSUE_POINTS * traits.open_service_issues)
        reasons.append("open_issue")
    if traits.recent_returns > 0:
        points += min(RECENT_RETURN_MAX, RECENT_RETURN_POINTS * traits.recent_returns)
        reasons.append("recent_returns")

    reason = call_reason.strip().lower()
    reason_churn = CHURN_RISK_CALL_REASONS.get(reason, 0.0)
    risk = traits.churn_risk
    model_churn = CHURN_MODEL_POINTS * min(1.0, max(0.0, risk.value)) if risk is not None else 0.0
    points += max(reason_churn, model_churn)
    if reason_churn > 0:
        reasons.append("churn_risk_call_reason")
    if risk is not None and risk.value >= CHURN_MODEL_REASON_FROM:
        reasons.append(f"churn_risk_model:{risk.model_version}")
    if reason in SCARCE_ITEM_CALL_REASONS and traits.loyalty_tier in SCARCE_ITEM_LOYAL_TIERS:
        points += SCARCE_ITEM_LOYAL_POINTS
        reasons.append("scarce_item_loyal")

    priority = int(round(min(100.0, max(0.0, points))))
    tier = "vip" if priority >= VIP_FROM else "priority" if priority >= PRIORITY_FROM else "standard"
    return CallPriority(priority, tier, tuple(reasons))
