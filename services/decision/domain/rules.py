"""Catalogue rules as CEL expressions: compiled once when the catalogue loads, evaluated per decision.

An offer lists rules in three stages, evaluated in this order; the first rule that is not `true` removes the offer
and is recorded in the trace as `rule:<id>` with the stage and why:

- `eligibility`: may this customer ever get the offer (tier, spend, segment facts);
- `applicability`: does it apply to this request (page, cart, call reason, time);
- `suitability`: is it right for the customer now (returns, open complaints, fatigue).

Expressions see two variables, built once per decision (`facts`):

| variable   | fields |
|------------|--------|
| `customer` | known, tier, tier_rank (0 none .. 4 platinum), total_spend, net_value, order_count, return_rate, recent_returns, full_price_share, shipping_paid_share, open_service_issues, cart_skus, preferred_sizes, preferred_colours, shipping_method, segments (list of facts below), features (the scored feature map; use `has(customer.features.x)`), returned_skus, returned_products, returned_categories (returned within the decision's `RETURNED_WITHIN_DAYS`, see domain/returns.py) |
| `request`  | channel, page, sku, product_id, category (of the viewed SKU), dwell_seconds, cart_value, cart_items, cart_products, cart_categories, store_id, call_reason, placement, hour (UTC 0-23), weekday (1 Monday .. 7 Sunday) |

Segment facts (`"loyal" in customer.segments`): `member` (any tier), `loyal` (gold or platinum), `high_value`
(net value >= 1,000), `frequent_buyer` (>= 5 orders), `full_price_buyer` (>= 80% units at full price),
`pays_for_shipping` (>= 50% of shipped orders), `frequent_returner` (return rate >= 40%), `open_issue`,
`new_customer` (no orders).

Nothing here evaluates Python: CEL is a side-effect-free, terminating expression language.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cel

STAGES = ("eligibility", "applicability", "suitability")
VARIABLES = frozenset({"customer", "request"})
HIGH_VALUE = 1_000.0
FREQUENT_BUYER_ORDERS = 5
FULL_PRICE_SHARE = 0.8
SHIPPING_PAID_SHARE = 0.5
FREQUENT_RETURNER = 0.4
TIERS = ("none", "bronze", "silver", "gold", "platinum")


class RuleError(ValueError):
    """A rule does not compile, reads an unknown variable, or does not give a boolean."""


@dataclass(frozen=True)
class Rule:
    id: str
    stage: str
    expression: str
    #: Operator's explanation, shown in the trace when the rule removes an offer; defaults to the expression.
    why: str
    program: Any = field(compare=False, hash=False, repr=False)

    @property
    def reads_features(self) -> bool:
        """Whether the rule may read `customer.features` (conservative: the word appears in its text). Converting
        the feature map into CEL values is most of the cost of a decision's facts, so it is left out of the facts
        when no rule of the catalogue reads it."""
        return "features" in self.expression

    def holds(self, facts: Any) -> bool:
        """True when the rule lets the offer through; raises RuntimeError/TypeError/KeyError on a runtime fault."""
        result = self.program.execute(facts)
        if not isinstance(result, bool):
            raise TypeError(f"gave {type(result).__name__} {result!r}, not a boolean")
        return result


def compile_rule(rule_id: str, stage: str, expression: str, why: str = "") -> Rule:
    """Compile and check a rule; the check runs it on the facts of an unknown customer on an empty request, so a
    misspelt field or a type error fails the catalogue load, not a decision."""
    if stage not in STAGES:
        raise RuleError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")
    try:
        program = cel.compile(expression)
    except ValueError as exc:
        raise RuleError(f"does not compile: {exc}") from None
    unknown = set(program.variables()) - VARIABLES
    # Comprehension variables (the `s` in `segments.exists(s, ...)`) show up as variables too; only reject names
    # that do not appear as a bound macro variable.
    unknown = {name for name in unknown if f"({name}," not in expression.replace(" ", "")}
    if unknown:
        raise RuleError(f"unknown variable(s) {sorted(unknown)} (use customer.* and request.*)")
    rule = Rule(rule_id, stage, expression, why or expression, program)
    try:
        rule.holds(_reference())
    except KeyError as exc:
        raise RuleError(f"unknown field {exc} (see services/decision/domain/rules.py for the fields)") from None
    except (RuntimeError, TypeError, ValueError) as exc:
        raise RuleError(f"fails on an unknown customer: {exc}") from None
    return rule


def segments(traits: Any) -> list[str]:
    """The segment-like facts rules can test, derived from the profile traits."""
    facts = []
    if traits.loyalty_tier != "none":
        facts.append("member")
    if traits.loyalty_tier in ("gold", "platinum"):
        facts.append("loyal")
    if traits.net_value >= HIGH_VALUE:
        facts.append("high_value")
    if traits.order_count >= FREQUENT_BUYER_ORDERS:
        facts.append("frequent_buyer")
    if traits.order_count == 0:
        facts.append("new_customer")
    if traits.full_price_share >= FULL_PRICE_SHARE:
        facts.append("full_price_buyer")
    if traits.shipping_paid_share >= SHIPPING_PAID_SHARE:
        facts.append("pays_for_shipping")
    if traits.return_rate >= FREQUENT_RETURNER:
        facts.append("frequent_returner")
    if traits.open_service_issues > 0:
        facts.append("open_issue")
    return facts


def facts(
    *,
    known: bool,
    traits: Any,
    features: Mapping[str, float] | None,
    channel: str,
    page: str,
    sku: str,
    product_id: str,
    category: str,
    dwell_seconds: float,
    cart_value: float,
    cart_items: int,
    cart_products: list[str],
    cart_categories: list[str],
    store_id: str,
    call_reason: str,
    now: datetime,
    returned_skus: list[str] | None = None,
    returned_products: list[str] | None = None,
    returned_categories: list[str] | None = None,
    placement: str = "",
) -> cel.Context:
    """One decision's CEL variables (built once, shared by every rule of every offer); `features` None leaves
    `customer.features` out (no rule reads it: see `Rule.reads_features`)."""
    prefs = traits.preferences
    customer = {
        "known": known,
        "tier": traits.loyalty_tier,
        "tier_rank": TIERS.index(traits.loyalty_tier),
        "total_spend": float(traits.total_spend),
        "net_value": float(traits.net_value),
        "order_count": int(traits.order_count),
        "return_rate": float(traits.return_rate),
        "recent_returns": int(traits.recent_returns),
        "full_price_share": float(traits.full_price_share),
        "shipping_paid_share": float(traits.shipping_paid_share),
        "open_service_issues": int(traits.open_service_issues),
        "cart_skus": list(traits.cart_skus),
        "preferred_sizes": list(prefs.sizes),
        "preferred_colours": list(prefs.colours),
        "shipping_method": prefs.shipping_method,
        "segments": segments(traits),
        "returned_skus": returned_skus or [],
        "returned_products": returned_products or [],
        "returned_categories": returned_categories or [],
    }
    if features is not None:
        customer["features"] = {k: float(v) for k, v in features.items()}
    return cel.Context(
        {
            "customer": customer,
            "request": {
                "channel": channel,
                "page": page,
                "sku": sku,
                "product_id": product_id,
                "category": category,
                "dwell_seconds": float(dwell_seconds),
                "cart_value": float(cart_value),
                "cart_items": int(cart_items),
                "cart_products": cart_products,
                "cart_categories": cart_categories,
                "store_id": store_id,
                "call_reason": call_reason,
                "placement": placement,
                "hour": now.hour,
                "weekday": now.isoweekday(),
            },
        }
    )


def _reference_facts() -> cel.Context:
    from services.decision.domain.model import Traits  # the model module imports the catalogue, which imports us

    return facts(
        known=False,
        traits=Traits(),
        features={},
        channel="web",
        page="",
        sku="",
        product_id="",
        category="",
        dwell_seconds=0.0,
        cart_value=0.0,
        cart_items=0,
        cart_products=[],
        cart_categories=[],
        store_id="",
        call_reason="",
        now=datetime(2026, 1, 1),
    )


class _LazyReference:
    """The reference facts, built on first use (nothing happens at import time)."""

    value: cel.Context | None = None


def _reference() -> cel.Context:
    if _LazyReference.value is None:
        _LazyReference.value = _reference_facts()
    return _LazyReference.value


def failing_rule(rules: tuple[Rule, ...], decision_facts: Any) -> tuple[Rule, str] | None:
    """The first rule that does not hold, with why; a rule that faults at run time removes the offer (fail closed)."""
    for rule in rules:
        try:
            if not rule.holds(decision_facts):
                return rule, rule.why
        except (RuntimeError, TypeError, ValueError, KeyError) as exc:
            return rule, f"rule error: {exc}"
    return None
