"""Simulated offer outcomes and the propensity model trained on them."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pytest

from cli.demo.retailer import generate
from cli.demo.training import (
    MODEL_FEATURE_NAMES,
    acceptance_probability,
    plausibly_eligible,
    simulate_outcomes,
    train_propensity_model,
)
from services.decision.catalogue import parse_catalogue
from services.decision.features import RequestContext, offer_features
from services.profile.domain import FEATURE_NAMES
from services.scoring.artifacts import list_artifacts, load_booster

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def catalogue():
    retailer = generate(5, seed=5, now=datetime(2025, 3, 1, tzinfo=UTC))
    return parse_catalogue(retailer.offers_doc(), retailer.products_doc())


def _customer(**traits: float) -> dict[str, float]:
    base = dict.fromkeys(FEATURE_NAMES, 0.0)
    base.update(order_count=3.0, total_spend=300.0, full_price_share=0.5, days_since_last_purchase=30.0)
    base.update(traits)
    return base


@pytest.fixture(scope="module")
def population() -> list[dict[str, float]]:
    rng = random.Random(1)
    people = []
    for _ in range(1500):
        orders = rng.choice((0, 1, 2, 4, 8))
        people.append(_customer(
            order_count=float(orders),
            total_spend=orders * rng.uniform(40, 160),
            full_price_share=rng.random(),
            shipping_paid_share=rng.random(),
            loyalty_tier=float(rng.randint(0, 4)),
            return_rate=rng.random() * 0.6,
            days_since_last_purchase=rng.choice((3.0, 20.0, 60.0, 120.0, 9999.0)),
            open_service_issues=float(rng.choice((0, 0, 0, 1))),
        ))
    return people


def _probability(catalogue, offer_type: str, customer: dict[str, float], **context) -> float:
    offer = next(o for o in catalogue.offers if o.type == offer_type and "web" in o.channels)
    row = offer_features(offer, RequestContext(channel="web", **context), catalogue)
    return acceptance_probability(offer, customer, row)


def test_ground_truth_has_the_expected_effects(catalogue):
    assert _probability(catalogue, "discount", _customer(full_price_share=0.1)) > 1.5 * _probability(
        catalogue, "discount", _customer(full_price_share=0.95)
    )
    assert _probability(catalogue, "free_shipping", _customer(shipping_paid_share=1.0)) > 2 * _probability(
        catalogue, "free_shipping", _customer(shipping_paid_share=0.0)
    )
    assert _probability(catalogue, "loyalty_perk", _customer(loyalty_tier=4.0)) > 2 * _probability(
        catalogue, "loyalty_perk", _customer(loyalty_tier=1.0)
    )
    assert _probability(catalogue, "cross_sell", _customer(return_rate=0.6)) < 0.5 * _probability(
        catalogue, "cross_sell", _customer(return_rate=0.0)
    )
    assert _probability(catalogue, "discount", _customer(days_since_last_purchase=9999.0)) < _probability(
        catalogue, "discount", _customer()
    )


def test_long_dwell_on_the_offers_product_raises_acceptance(catalogue):
    offer = next(o for o in catalogue.offers if o.type == "pre_order" and "web" in o.channels)
    sku = catalogue.products[offer.product_id].variants[0].sku
    customer = _customer()

    def probability(**context) -> float:
        row = offer_features(offer, RequestContext(channel="web", **context), catalogue)
        return acceptance_probability(offer, customer, row)

    assert probability(sku=sku, dwell_seconds=150) > probability(sku=sku, dwell_seconds=5) > probability()


def test_eligibility_follows_the_offer_rules(catalogue):
    gold = next(o for o in catalogue.offers if o.eligibility.min_tier == "gold")
    assert not plausibly_eligible(gold, _customer(loyalty_tier=2.0))
    assert plausibly_eligible(gold, _customer(loyalty_tier=3.0))
    shipping = next(o for o in catalogue.offers if o.eligibility.min_shipping_paid_share >= 0.5)
    assert not plausibly_eligible(shipping, _customer(shipping_paid_share=0.2))
    assert plausibly_eligible(shipping, _customer(shipping_paid_share=0.9))


def test_simulation_is_seeded_and_shaped_like_serving_rows(catalogue, population):
    first = simulate_outcomes(catalogue, population, 3000, seed=9)
    again = simulate_outcomes(catalogue, population, 3000, seed=9)
    other = simulate_outcomes(catalogue, population, 3000, seed=10)
    assert first.rows == again.rows and first.labels == again.labels
    assert first.labels != other.labels
    assert len(first.rows) == len(first.labels) == 3000
    assert all(set(row) == set(MODEL_FEATURE_NAMES) for row in first.rows)
    assert 0.03 < np.mean(first.labels) < 0.2
    assert 0.02 < float(np.median(first.truth)) < 0.2
    channels = {c: sum(row[f"ctx_channel_{c}"] for row in first.rows) for c in ("web", "pos", "call_center")}
    assert channels["web"] > channels["pos"] > 0 and channels["call_center"] > 0


def test_trained_model_beats_chance_and_loads(catalogue, population, tmp_path):
    report = train_propensity_model(catalogue, population, models_dir=tmp_path, impressions=8000, seed=3)
    assert report.auc > 0.6
    assert report.auc <= report.oracle_auc + 0.03
    [artifact] = list_artifacts(tmp_path)
    assert artifact.metadata.use_case == "offer_propensity"
    assert artifact.metadata.status == "champion"
    assert list(artifact.metadata.feature_names) == list(MODEL_FEATURE_NAMES)
    booster = load_booster(artifact.path, MODEL_FEATURE_NAMES)
    row = np.array([[population[0].get(name, 0.0) for name in MODEL_FEATURE_NAMES]])
    assert 0.0 < float(booster.inplace_predict(row)[0]) < 1.0
