"""Step 7 of Decide: score = propensity x value x value factor x lever x context weight; one offer per product; rank
and cut.

The value factor (domain/value.py) scales a retention offer's value (loyalty perk, service action) with the
customer's predicted lifetime value, 1 to 2; 1 for every other offer and for customers without the model trait.

The context weight starts at 1 and is multiplied for what the customer is doing or always does:

| code                | factor | when                                                                         |
|---------------------|--------|------------------------------------------------------------------------------|
| `long_dwell`        | x1.5   | the request's dwell on the offer's product is >= long_dwell_seconds           |
| `pays_for_shipping` | x1.3   | a free-shipping offer, and the customer paid shipping on >= 50% of orders     |
| `cart_match`        | x1.2   | the offer's product is in the cart (a nudge to check out)                      |
| `pays_full_price`   | x0.7   | a discount, and >= 80% of the customer's units were bought at full price      |

Exploration (optional) picks the first slot among the `explore_top` best candidates; the rest of the slate is filled
greedily after it. Epsilon-greedy: the best with probability 1 - epsilon, else one drawn uniformly (probabilities
exact). Thompson sampling: each candidate's propensity p is drawn from Beta(1 + n*p, 1 + n*(1 - p)) (n =
`thompson_strength` pseudo-observations) and the highest sampled score wins; the probability of each first choice is
computed exactly by quadrature (`domain/thompson.py`) and the choice is drawn from those probabilities, which is the
same distribution as drawing the Betas and taking the best, so a shown offer never has a logged probability of zero.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.decision.catalogue import Catalogue, Offer
from services.decision.domain.model import Candidate, Context, CustomerView
from services.decision.domain.thompson import first_probabilities
from services.decision.domain.value import value_factor

EPSILON_GREEDY = "epsilon_greedy"
THOMPSON = "thompson"
SHIPPING_PAID_THRESHOLD = 0.5
FULL_PRICE_THRESHOLD = 0.8


@dataclass(frozen=True)
class Weights:
    long_dwell: float = 1.5
    pays_for_shipping: float = 1.3
    cart_match: float = 1.2
    pays_full_price: float = 0.7


@dataclass(frozen=True)
class ArbitrationPolicy:
    long_dwell_seconds: float = 30.0
    min_priority: float = 0.0
    weights: Weights = Weights()
    #: Epsilon-greedy exploration of the first slot: with this probability it goes to one of the `explore_top`
    #: best candidates drawn uniformly instead of the best.
    epsilon: float = 0.0
    explore_top: int = 5
    #: EPSILON_GREEDY (explores only when epsilon > 0) or THOMPSON.
    exploration: str = EPSILON_GREEDY
    #: Thompson sampling: the prior's strength (pseudo-observations behind each propensity).
    thompson_strength: float = 20.0

    @property
    def explores(self) -> bool:
        return self.exploration == THOMPSON or self.epsilon > 0


def context_weight(
    offer: Offer,
    ctx: Context,
    customer: CustomerView,
    in_cart: frozenset[str],
    catalogue: Catalogue,
    policy: ArbitrationPolicy,
) -> tuple[float, tuple[str, ...]]:
    """The offer's context weight and the codes of the factors that made it."""
    weights = policy.weights
    traits = customer.traits
    weight = 1.0
    codes: list[str] = []
    if (
        offer.product_id is not None
        and ctx.dwell_seconds >= policy.long_dwell_seconds
        and catalogue.product_of_sku.get(ctx.sku) == offer.product_id
    ):
        weight *= weights.long_dwell
        codes.append("long_dwell")
    if offer.type == "free_shipping" and traits.shipping_paid_share >= SHIPPING_PAID_THRESHOLD:
        weight *= weights.pays_for_shipping
        codes.append("pays_for_shipping")
    if offer.product_id is not None and offer.product_id in in_cart:
        weight *= weights.cart_match
        codes.append("cart_match")
    if offer.type == "discount" and traits.full_price_share >= FULL_PRICE_THRESHOLD:
        weight *= weights.pays_full_price
        codes.append("pays_full_price")
    return weight, tuple(codes)


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    context_weight: float
    weight_codes: tuple[str, ...]
    score: float
    #: The multiplier of the offer's value (domain/value.py) and its source ("" when 1.0).
    value_factor: float = 1.0
    value_source: str = ""


@dataclass(frozen=True)
class Arbitration:
    ranked: tuple[Scored, ...]
    #: Every candidate with its factors, best first (ranked and dropped alike), for the trace.
    scored: tuple[Scored, ...]
    #: Offer id -> why a scored candidate was not returned: "below_min_priority", "diversity" (a better offer for
    #: the same product/SKU is in), "diversity_type" (a better offer of the same type is in), "beyond_max_offers".
    dropped: dict[str, str]
    #: Returned offer id -> the probability that this policy shows it in this decision (1.0 when greedy).
    shown_probability: dict[str, float] = field(default_factory=dict)
    #: Exploration pool offer id -> the probability that it takes the first slot (they sum to one).
    first_probability: dict[str, float] = field(default_factory=dict)
    explored: bool = False


def arbitrate(
    candidates: Iterable[Candidate],
    ctx: Context,
    customer: CustomerView,
    in_cart: frozenset[str],
    catalogue: Catalogue,
    policy: ArbitrationPolicy,
    max_offers: int,
    rng: random.Random | None = None,
) -> Arbitration:
    scored: list[Scored] = []
    for candidate in candidates:
        offer = candidate.offer
        weight, codes = context_weight(offer, ctx, customer, in_cart, catalogue, policy)
        factor, source = value_factor(offer, customer)
        score = candidate.propensity * offer.value * factor * offer.lever * weight
        scored.append(Scored(candidate, weight, codes, score, factor, source))
    scored.sort(key=lambda s: (-s.score, s.candidate.offer.id))  # ties broken by id: the same input ranks the same
    ranked, dropped = _fill(scored, policy.min_priority, max_offers, None)
    if not policy.explores or not ranked:
        return Arbitration(tuple(ranked), tuple(scored), dropped, {s.candidate.offer.id: 1.0 for s in ranked})
    # The rest of the slate is filled greedily after the first choice, so each possible first choice gives one
    # slate and the probability of showing an offer is the sum of its slates' first-choice probabilities.
    pool = [s for s in scored if s.score >= policy.min_priority][: max(1, policy.explore_top)]
    greedy = ranked[0]
    rng = rng or random.Random()
    if policy.exploration == THOMPSON:
        first_probability, chosen = _thompson(pool, policy, rng)
        explored = chosen is not greedy
    else:
        first_probability = {
            s.candidate.offer.id: (1 - policy.epsilon) * (s is greedy) + policy.epsilon / len(pool) for s in pool
        }
        explored = rng.random() < policy.epsilon
        chosen = rng.choice(pool) if explored else greedy
    shown: dict[str, float] = {}
    slates = {}
    for first in pool:
        slate = _fill(scored, policy.min_priority, max_offers, first)
        slates[first.candidate.offer.id] = slate
        for item in slate[0]:
            offer_id = item.candidate.offer.id
            shown[offer_id] = shown.get(offer_id, 0.0) + first_probability[first.candidate.offer.id]
    ranked, dropped = slates[chosen.candidate.offer.id]
    probabilities = {s.candidate.offer.id: shown[s.candidate.offer.id] for s in ranked}
    return Arbitration(tuple(ranked), tuple(scored), dropped, probabilities, first_probability, explored)


def _thompson(pool: list[Scored], policy: ArbitrationPolicy, rng: random.Random) -> tuple[dict[str, float], Scored]:
    """Exact first-slot probabilities under Thompson sampling, and the first choice drawn from them."""
    # Score per unit of propensity (value x value factor x lever x context weight); the sampled propensity replaces
    # the point one.
    probabilities = first_probabilities(
        [s.candidate.propensity for s in pool],
        [s.candidate.offer.value * s.value_factor * s.candidate.offer.lever * s.context_weight for s in pool],
        policy.thompson_strength,
    )
    first_probability = {s.candidate.offer.id: p for s, p in zip(pool, probabilities, strict=True)}
    draw, chosen = rng.random(), pool[0]
    for item, probability in zip(pool, probabilities, strict=True):
        if probability > 0:  # never choose an offer logged at zero (the last positive one takes any rounding left)
            chosen = item
            draw -= probability
            if draw < 0:
                break
    return first_probability, chosen


def _fill(
    scored: list[Scored], min_priority: float, max_offers: int, first: Scored | None
) -> tuple[list[Scored], dict[str, str]]:
    """The slate, best first, under diversity; `first` (when given) takes the first slot."""
    ranked: list[Scored] = []
    dropped: dict[str, str] = {}
    taken_keys: set[str] = set()
    taken_types: set[str] = set()
    order = scored if first is None else [first, *(s for s in scored if s is not first)]
    for item in order:
        offer = item.candidate.offer
        if item.score < min_priority:
            dropped[offer.id] = "below_min_priority"
        elif item.candidate.key in taken_keys:
            dropped[offer.id] = "diversity"  # a better offer for the same product is already in
        elif offer.type in taken_types and not offer.allow_same_type:
            dropped[offer.id] = "diversity_type"  # two discounts side by side compete with each other
        elif len(ranked) >= max_offers:
            dropped[offer.id] = "beyond_max_offers"
        else:
            ranked.append(item)
            taken_keys.add(item.candidate.key)
            taken_types.add(offer.type)
    return ranked, dropped
