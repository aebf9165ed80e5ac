"""The decision's own value types: the request, the customer as the decision sees it, stock, and the answer.

Plain frozen dataclasses; the servicer and the gateways translate protobuf to and from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from services.decision.catalogue import TIERS, Offer

#: Loyalty tiers from lowest to highest ("none" = no membership), as in the catalogue's eligibility rules.
TIER_RANK = {tier: rank for rank, tier in enumerate(TIERS)}

#: What a customer can do with an offer (RecordOutcome), in the contract's order.
OUTCOME_TYPES = ("impression", "click", "accept", "decline", "purchase")


@dataclass(frozen=True)
class CartLine:
    sku: str
    quantity: int
    unit_price: float


@dataclass(frozen=True)
class Context:
    """Where and in what situation the decision is asked for."""

    page: str = ""
    sku: str = ""
    dwell_seconds: float = 0.0
    cart: tuple[CartLine, ...] = ()
    store_id: str = ""
    call_reason: str = ""
    #: The slot the offers will fill (empty: any); offers that list placements are eligible only there.
    placement: str = ""


@dataclass(frozen=True)
class CustomerRef:
    """A customer id, or identifiers (type number, raw value) for the identity service to resolve."""

    customer_id: str = ""
    identifiers: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class DecideInput:
    channel: str  # "web", "pos", "call_center"; anything else is rejected by validation
    customer: CustomerRef
    context: Context
    max_offers: int = 0


@dataclass(frozen=True)
class Preferences:
    sizes: tuple[str, ...] = ()
    colours: tuple[str, ...] = ()
    shipping_method: str = ""


@dataclass(frozen=True)
class Prediction:
    """A model's prediction about the customer, written to the profile by nightly rescoring (a model trait)."""

    value: float
    model_version: str


@dataclass(frozen=True)
class ReturnedItem:
    """A SKU the customer returned recently (the profile keeps the last 90 days); `category` may be ""."""

    sku: str
    category: str
    returned_at: datetime


@dataclass(frozen=True)
class Traits:
    """The profile traits the decision uses; the defaults describe a customer we know nothing about."""

    loyalty_tier: str = "none"
    total_spend: float = 0.0
    net_value: float = 0.0
    order_count: int = 0
    return_rate: float = 0.0
    recent_returns: int = 0
    full_price_share: float = 0.0
    shipping_paid_share: float = 0.0
    open_service_issues: int = 0
    cart_skus: tuple[str, ...] = ()
    preferences: Preferences = Preferences()
    #: The profile segments the customer is in (names, sorted); logged with each decision for the report.
    segments: tuple[str, ...] = ()
    #: Predicted net spend in the next 12 months (the lifetime-value model's trait); None when never scored.
    predicted_ltv: Prediction | None = None
    #: Probability of no order in the churn model's horizon (its trait); None when never scored.
    churn_risk: Prediction | None = None
    #: SKUs returned recently, newest first (domain/returns.py narrows them to the decision's window).
    recently_returned: tuple[ReturnedItem, ...] = ()


@dataclass(frozen=True)
class CustomerView:
    """The customer as one decision sees them.

    `consents` holds the granted (purpose, channel) pairs; None means consent could not be read, which the
    eligibility rules treat like "not granted" (fail safe).
    """

    customer_id: str = ""
    known: bool = False
    traits: Traits = Traits()
    features: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    consents: frozenset[tuple[str, str]] | None = frozenset()

    def allows(self, purpose: str, channel: str) -> bool:
        return self.consents is not None and (purpose, channel) in self.consents


ANONYMOUS = CustomerView()


@dataclass(frozen=True)
class StockLevel:
    """Units of one SKU variant at one location, as the inventory service reports them."""

    sku: str
    product_id: str
    location_id: str
    location_kind: str  # "store", "warehouse" or "" when unknown
    on_hand: int


class StockView:
    """Stock looked up for one decision, indexed for the questions the pipeline asks."""

    def __init__(self, levels: Iterable[StockLevel]) -> None:
        self._units: dict[tuple[str, str], int] = {}
        self._by_sku: dict[str, list[StockLevel]] = {}
        self._products_in_stock: set[tuple[str, str]] = set()
        for level in levels:
            self._units[(level.sku, level.location_id)] = level.on_hand
            self._by_sku.setdefault(level.sku, []).append(level)
            if level.on_hand > 0:
                self._products_in_stock.add((level.product_id, level.location_id))

    def units(self, sku: str, location_id: str) -> int:
        return self._units.get((sku, location_id), 0)

    def product_in_stock(self, product_id: str, location_id: str) -> bool:
        """Whether any variant of the product has units at the location."""
        return (product_id, location_id) in self._products_in_stock

    def levels(self, sku: str) -> list[StockLevel]:
        """Every location's level of one SKU variant."""
        return self._by_sku.get(sku, [])


#: What the web pre-fill's button does (CartPrefill.action).
ADD_TO_CART = "add_to_cart"
BUY_NOW = "buy_now"


@dataclass(frozen=True)
class Prefill:
    sku: str
    quantity: int
    size: str
    colour: str
    shipping_method: str
    #: ADD_TO_CART, or BUY_NOW (express checkout) for a scarce offer kept for this customer.
    action: str = ADD_TO_CART
    #: BUY_NOW: units of the product left at the fulfilling location, and how long the checkout is held (seconds).
    units_left: int = 0
    hold_seconds: int = 0


@dataclass(frozen=True)
class Scarce:
    """Why a scarce offer was kept for this customer, which makes it a buy-now (domain/scarcity.py)."""

    #: "scarce_loyal" or "scarce_high_value".
    code: str
    units_left: int
    location_id: str
    tier: str
    why: str


@dataclass(frozen=True)
class StockHint:
    sku: str
    location_id: str
    on_hand: int


@dataclass(frozen=True)
class Candidate:
    """An offer that survived the filters, with its acceptance probability and the reasons gathered so far."""

    offer: Offer
    propensity: float
    #: "model_propensity" (scored) or "rule_propensity" (the offer's prior).
    propensity_source: str
    reasons: tuple[str, ...] = ()
    #: Offers sharing a key compete for one slot (one offer per product); None means the offer's own key.
    diversity_key: str | None = None
    stock: tuple[StockHint, ...] = ()
    #: Set when the offer is scarce and kept for this customer: the channel experience turns it into a buy-now.
    scarce: Scarce | None = None

    @property
    def key(self) -> str:
        if self.diversity_key is not None:
            return self.diversity_key
        return self.offer.product_id or self.offer.id


@dataclass(frozen=True)
class DecidedOffer:
    """One ranked offer of the answer, with its channel experience."""

    offer_id: str
    name: str
    type: str
    rank: int
    score: float
    propensity: float
    value: float
    lever: float
    reason_codes: tuple[str, ...]
    prefill: Prefill | None = None
    script: str = ""
    stock: tuple[StockHint, ...] = ()
    #: The probability that the decision policy (exploration, control draw) shows this offer; 1.0 if greedy.
    #: Exact, except under Thompson sampling (a Monte Carlo estimate).
    probability: float = 1.0
    #: Web: the line shown with the offer (the buy-now text); "" when the name says it all.
    headline: str = ""


@dataclass(frozen=True)
class Decision:
    """The answer to Decide (and the action part of PrioritizeCall), as persisted."""

    decision_id: str
    customer_id: str
    channel: str
    offers: tuple[DecidedOffer, ...]
    degraded_reasons: tuple[str, ...]
    catalogue_version: str
    model_version: str
    decided_at: datetime
    #: Why no offer was returned on purpose ("nothing_eligible", "below_min_priority", "control_group").
    no_offer_reason: str = ""
    #: The customer's experiment arm: "treatment" or "control".
    arm: str = "treatment"

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_reasons)


@dataclass(frozen=True)
class CallPriority:
    priority: int
    tier: str  # "standard", "priority", "vip"
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class CallDecision:
    """The answer to PrioritizeCall: the queue priority and the agent's next-best action."""

    priority: CallPriority
    decision: Decision
    #: What the agent must not do on this call (domain/agent.py), most important first.
    avoid: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutcomeInput:
    outcome_id: str
    decision_id: str
    offer_id: str
    type: str  # one of OUTCOME_TYPES; anything else is rejected
    occurred_at: datetime | None
    revenue: float


@dataclass(frozen=True)
class PendingOutcome:
    """A recorded outcome not yet forwarded to the profile service (the outbox's unit of work)."""

    outcome_id: str
    customer_id: str
    decision_id: str
    offer_id: str
    type: str
    occurred_at: datetime

    @property
    def event_id(self) -> str:
        # The profile applies an event id once, so resending after a lost reply has no second effect.
        return f"outcome:{self.outcome_id}"
