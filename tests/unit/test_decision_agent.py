"""The call-centre agent's "avoid" lines and the upsell offers removed during an open complaint."""

from __future__ import annotations

import pytest

from services.decision.domain.agent import avoid_lines, call_removals
from tests.unit.test_decision_domain import catalogue, customer, offer

pytestmark = pytest.mark.unit

COMPLAINT = "Do not upsell or cross-sell: the customer has an open complaint."
NO_MARKETING = "No marketing: they have not agreed to marketing by phone."


@pytest.mark.parametrize(
    ("who", "reason", "lines"),
    [
        (customer(), "order_status", ()),
        (customer(open_service_issues=1), "order_status", (COMPLAINT,)),
        (customer(), "complaint", (COMPLAINT,)),
        (
            customer(recent_returns=2),
            "return",
            ("Do not recommend products like the ones they returned (2 return(s) in 30 days).",),
        ),
        (customer(consent_channels=("web",)), "order_status", (NO_MARKETING,)),
        (customer(consents_known=False), "", ("No marketing: their consent could not be checked.",)),
        (customer(consent_channels=(), open_service_issues=2), "cancel", (COMPLAINT, NO_MARKETING)),
    ],
)
def test_avoid_lines_follow_the_customer_and_the_call(who, reason, lines):
    assert avoid_lines(who, reason) == lines


def test_an_open_complaint_removes_upsell_offers_only():
    cat = catalogue(
        offer("disc"), offer("xsell", type="cross_sell", product_id="P-SOCK"), offer("perk", type="loyalty_perk"),
        offer("fix", type="service_action"),
    )
    removed = call_removals(cat.offers, customer(open_service_issues=1), "order_status")
    assert sorted(removed) == ["disc", "xsell"]
    assert removed["disc"] == ("open_complaint", "no upselling while the customer has an open complaint")
    assert call_removals(cat.offers, customer(), "order_status") == {}
