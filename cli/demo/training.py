"""Trains the demo's offer-propensity model from simulated offer outcomes.

The demo has no real decisions yet, so outcomes are simulated: impressions of eligible offers are sampled for real
customers (their feature vectors as the profile service serves them) in sampled request contexts, a hidden
ground-truth acceptance probability is computed from those same features with effects a merchandiser would
expect, and labels are drawn from it with a seeded generator. The model is then trained by the scoring service's
own trainer on exactly the rows the decision service will score online (profile FEATURE_NAMES followed by
OFFER_FEATURE_NAMES, computed by `services.decision.features.offer_features`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.decision.catalogue import TIERS, Catalogue, Offer
from services.decision.features import OFFER_FEATURE_NAMES, RequestContext, offer_features
from services.profile.domain import FEATURE_NAMES
from services.scoring.artifacts import ModelMetadata
from services.scoring.training import roc_auc, train_binary_model

#: Channel mix of the simulated impressions (the web sees most traffic).
CHANNEL_WEIGHTS = {"web": 0.6, "pos": 0.2, "call_center": 0.2}
MODEL_FEATURE_NAMES: tuple[str, ...] = (*FEATURE_NAMES, *OFFER_FEATURE_NAMES)


@dataclass(frozen=True)
class Simulation:
    rows: list[dict[str, float]]
    labels: list[int]
    #: The hidden acceptance probability of each row (what a perfect model would predict).
    truth: np.ndarray


@dataclass(frozen=True)
class TrainingReport:
    metadata: ModelMetadata
    impressions: int
    acceptance_rate: float
    #: AUC of the hidden ground-truth probabilities over all simulated rows: roughly the best a model can reach.
    oracle_auc: float
    seconds: float

    @property
    def auc(self) -> float:
        return self.metadata.metrics["auc"]


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def acceptance_probability(offer: Offer, customer: Mapping[str, float], row: Mapping[str, float]) -> float:
    """The hidden ground truth: how likely this customer accepts this offer in this context.

    `customer` is the profile feature vector, `row` the offer/context features of the impression.
    """
    z = _logit(offer.base_propensity) - 0.3
    orders = customer.get("order_count", 0.0)
    full_price = customer.get("full_price_share", 0.5) if orders else 0.5
    return_rate = customer.get("return_rate", 0.0)
    tier = customer.get("loyalty_tier", 0.0)
    if offer.type == "discount":
        # Bargain hunters (rarely pay full price) jump at discounts; full-price buyers barely care.
        z += 2.4 * (0.5 - full_price) + 2.0 * offer.discount_pct / 100
    elif offer.type == "free_shipping":
        z += 2.6 * customer.get("shipping_paid_share", 0.0) - 0.6
        z += 0.4 * (0 < row["ctx_cart_value"] < 100)
    elif offer.type == "loyalty_perk":
        z += 0.5 * (tier - 2) + min(customer.get("loyalty_points", 0.0), 5000.0) / 10_000
    elif offer.type == "pre_order":
        z += 0.6 * min(customer.get("total_spend", 0.0), 2000.0) / 1000
    elif offer.type == "cross_sell":
        # Customers who send much back do not want more things; a full cart invites one more.
        z += -3.5 * return_rate + 0.3 * min(row["ctx_cart_items"], 4.0)
    elif offer.type == "service_action":
        z += 0.7 * min(customer.get("open_service_issues", 0.0), 3.0) + 0.4 * row["ctx_channel_call_center"]
    if row["ctx_viewing_offer_product"]:
        # Long dwell on the offer's product means a purchase is close.
        z += 0.7 + 1.2 * min(row["ctx_dwell_seconds"], 180.0) / 180
    z += 0.25 * (customer.get("max_dwell_seconds_7d", 0.0) > 60)
    days = customer.get("days_since_last_purchase", 9999.0)
    if days > 90:
        z -= 0.7  # lapsed customers ignore most offers
    elif days < 14:
        z += 0.3
    z += 0.35 * row["ctx_channel_pos"] + 0.15 * row["ctx_channel_call_center"]  # a person asking helps
    return _sigmoid(z)


def plausibly_eligible(offer: Offer, customer: Mapping[str, float]) -> bool:
    """The profile-based eligibility rules, so the simulation trains on offers the decision would really score."""
    rules = offer.eligibility
    return (
        customer.get("loyalty_tier", 0.0) >= TIERS.index(rules.min_tier)
        and customer.get("total_spend", 0.0) >= rules.min_total_spend
        and customer.get("order_count", 0.0) >= rules.min_orders
        and customer.get("return_rate", 0.0) <= rules.max_return_rate
        and customer.get("shipping_paid_share", 0.0) >= rules.min_shipping_paid_share
    )


def _context(rng: np.random.Generator, offer: Offer, channel: str, customer: Mapping[str, float],
             catalogue: Catalogue, all_skus: Sequence[str]) -> RequestContext:
    sku, dwell = "", 0.0
    product = catalogue.products.get(offer.product_id) if offer.product_id else None
    draw = rng.random()
    if product is not None and draw < 0.4:
        sku = product.variants[int(rng.integers(len(product.variants)))].sku
    elif channel != "call_center" and draw < 0.7:
        sku = all_skus[int(rng.integers(len(all_skus)))]
    if sku and channel == "web":
        dwell = float(min(600.0, rng.exponential(45.0)))
    cart_value, cart_items = 0.0, 0
    wants_cart = offer.eligibility.requires_cart or (channel != "call_center" and rng.random() < 0.4)
    if wants_cart:
        cart_items = int(customer.get("cart_items", 0.0)) or int(rng.integers(1, 4))
        cart_value = customer.get("cart_value", 0.0) or float(cart_items * rng.uniform(20.0, 90.0))
    return RequestContext(channel=channel, sku=sku, dwell_seconds=dwell, cart_value=cart_value,
                          cart_items=cart_items)


def simulate_outcomes(catalogue: Catalogue, customers: Sequence[Mapping[str, float]], impressions: int,
                      seed: int) -> Simulation:
    """`impressions` rows of (customer features + offer/context features) with drawn accept/decline labels."""
    if not customers:
        raise ValueError("no customer feature vectors to simulate impressions for")
    rng = np.random.default_rng(seed)
    channels = list(CHANNEL_WEIGHTS)
    channel_p = np.array(list(CHANNEL_WEIGHTS.values()))
    by_channel = {c: [o for o in catalogue.offers if c in o.channels] for c in channels}
    all_skus = sorted(catalogue.product_of_sku)
    rows: list[dict[str, float]] = []
    truth: list[float] = []
    while len(rows) < impressions:
        customer = customers[int(rng.integers(len(customers)))]
        channel = channels[int(rng.choice(len(channels), p=channel_p))]
        candidates = [o for o in by_channel[channel] if plausibly_eligible(o, customer)]
        if not candidates:
            continue
        offer = candidates[int(rng.integers(len(candidates)))]
        context = _context(rng, offer, channel, customer, catalogue, all_skus)
        row = {**customer, **offer_features(offer, context, catalogue)}
        truth.append(acceptance_probability(offer, customer, row))
        rows.append(row)
    probabilities = np.asarray(truth)
    labels = (rng.random(probabilities.size) < probabilities).astype(int).tolist()
    return Simulation(rows, labels, probabilities)


def train_propensity_model(catalogue: Catalogue, customers: Sequence[Mapping[str, float]], *, models_dir: Path,
                           impressions: int = 50_000, seed: int = 42) -> TrainingReport:
    """Simulate outcomes and train the champion offer-propensity model into `models_dir` (CPU-bound)."""
    started = time.perf_counter()
    simulation = simulate_outcomes(catalogue, customers, impressions, seed)
    metadata = train_binary_model(
        simulation.rows,
        simulation.labels,
        feature_names=MODEL_FEATURE_NAMES,
        models_dir=models_dir,
        use_case="offer_propensity",
        name="offer-propensity-xgb",
        status="champion",
        seed=seed,
    )
    return TrainingReport(
        metadata=metadata,
        impressions=len(simulation.rows),
        acceptance_rate=float(np.mean(simulation.labels)),
        oracle_auc=roc_auc(simulation.labels, simulation.truth),
        seconds=time.perf_counter() - started,
    )
