"""What the call-centre agent must avoid, and the offers that would break it.

- An open service issue, or a complaint call: "do not upsell or cross-sell"; offers of UPSELL_TYPES are removed
  (trace code `open_complaint`).
- Returns in the decision's window (domain/returns.py): "Do not offer <category>: returned on <date>." per
  returned category (offers of those products and categories are already removed in screening, code
  `recently_returned`); returns whose category is unknown: "do not recommend products like the returned ones".
- No marketing consent for the call centre, or consent unknown: "no marketing" (consent already removed those
  offers in screening).

The lines go to PrioritizeCallResponse.avoid, most important first; the removals apply to every call-centre
decision so the proposed action never contradicts them.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.decision.catalogue import Offer
from services.decision.domain.eligibility import MARKETING
from services.decision.domain.model import CustomerView
from services.decision.domain.returns import NOTHING_RETURNED, Returned
from services.decision.domain.returns import avoid_lines as returned_lines

CALL_CENTRE = "call_center"
#: Offer types that sell more: not while the customer has a complaint open.
UPSELL_TYPES = frozenset({"discount", "cross_sell", "pre_order"})
OPEN_COMPLAINT = "open_complaint"


def has_open_complaint(customer: CustomerView, call_reason: str) -> bool:
    return customer.traits.open_service_issues > 0 or call_reason.strip().lower() == "complaint"


def avoid_lines(customer: CustomerView, call_reason: str, returned: Returned = NOTHING_RETURNED) -> tuple[str, ...]:
    traits = customer.traits
    lines = []
    if has_open_complaint(customer, call_reason):
        lines.append("Do not upsell or cross-sell: the customer has an open complaint.")
    if returned.categories:
        lines.extend(returned_lines(returned))
    elif traits.recent_returns > 0:
        lines.append(
            f"Do not recommend products like the ones they returned ({traits.recent_returns} return(s) in 30 days)."
        )
    if customer.consents is None:
        lines.append("No marketing: their consent could not be checked.")
    elif not customer.allows(MARKETING, CALL_CENTRE):
        lines.append("No marketing: they have not agreed to marketing by phone.")
    return tuple(lines)


def call_removals(offers: Iterable[Offer], customer: CustomerView, call_reason: str) -> dict[str, tuple[str, str]]:
    """Offers the agent must not propose on this call: offer id -> (trace code, why)."""
    if not has_open_complaint(customer, call_reason):
        return {}
    why = "no upselling while the customer has an open complaint"
    return {o.id: (OPEN_COMPLAINT, why) for o in offers if o.type in UPSELL_TYPES}
