"""What the bench's generator sends: the channel mix, skewed popularity, realistic contexts, unique events."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as decision_pb

from cli.bench.stats import CHANNELS
from cli.bench.workload import (
    BUDGETS,
    Customer,
    Mix,
    Sku,
    by_popularity,
    event_batch,
    ingest_subjects,
    plan_requests,
    zipf_picks,
)
from cli.demo.retailer import STORE_IDS

pytestmark = pytest.mark.unit

SKUS = [Sku(f"P{n:04d}-BLK-M", 10.0 + n, "tops" if n % 2 else "shoes") for n in range(40)]
CUSTOMERS = [
    Customer(f"c_{n:05d}", {"email": f"person{n}@example.com", "cookie_id": f"ck-{n:016x}",
                            **({"loyalty_card": f"LC{n:08d}"} if n % 3 == 0 else {}),
                            **({"phone": f"+1212555{n:04d}"} if n % 2 == 0 else {})})
    for n in range(500)
]


@pytest.fixture(scope="module")
def plan():
    return plan_requests(CUSTOMERS, SKUS, 10_000, seed=3)


def _parse(request):
    message = decision_pb.PrioritizeCallRequest if request.method == "PrioritizeCall" else decision_pb.DecideRequest
    return message.FromString(request.payload)


def test_the_plan_is_deterministic_per_seed(plan):
    assert plan[:200] == plan_requests(CUSTOMERS, SKUS, 200, seed=3)
    assert plan[:200] != plan_requests(CUSTOMERS, SKUS, 200, seed=4)


def test_channel_mix_methods_and_deadlines(plan):
    shares = Counter(CHANNELS[r.channel] for r in plan)
    assert shares["web"] / len(plan) == pytest.approx(0.7, abs=0.02)
    assert shares["pos"] / len(plan) == pytest.approx(0.2, abs=0.02)
    assert shares["call_center"] / len(plan) == pytest.approx(0.1, abs=0.02)
    for request in plan[:500]:
        channel = CHANNELS[request.channel]
        assert request.method == ("PrioritizeCall" if channel == "call_center" else "Decide")
        assert request.timeout == BUDGETS[channel]


def test_customers_by_id_or_by_the_touchpoints_identifiers(plan):
    by_id = identified = anonymous = 0
    known_ids = {c.customer_id for c in CUSTOMERS}
    for request in plan[:3000]:
        ref = _parse(request).customer
        if ref.customer_id:
            assert ref.customer_id in known_ids and not ref.identifiers
            by_id += 1
            continue
        kinds = {i.type for i in ref.identifiers}
        if any(i.value.startswith("ck-bench-") for i in ref.identifiers):
            anonymous += 1
            continue
        identified += 1
        if CHANNELS[request.channel] == "pos":
            assert kinds <= {common_pb2.IDENTIFIER_TYPE_LOYALTY_CARD, common_pb2.IDENTIFIER_TYPE_PHONE,
                             common_pb2.IDENTIFIER_TYPE_EMAIL}
        if CHANNELS[request.channel] == "call_center":
            assert kinds <= {common_pb2.IDENTIFIER_TYPE_PHONE, common_pb2.IDENTIFIER_TYPE_EMAIL}
    assert by_id / 3000 == pytest.approx(0.5 * (1 - 0.7 * 0.05), abs=0.04)
    assert identified > 1000 and 0 < anonymous < 200


def test_contexts_look_like_each_touchpoint(plan):
    pages, skus = Counter(), {s.sku for s in SKUS}
    for request in plan[:2000]:
        message = _parse(request)
        channel = CHANNELS[request.channel]
        if channel == "web":
            page = message.context.page
            pages[page.split("/")[0]] += 1
            if page == "product":
                assert message.context.sku in skus and message.context.dwell.seconds >= 1
            if page == "cart":
                assert message.context.cart and all(line.sku in skus for line in message.context.cart)
        elif channel == "pos":
            assert message.context.store_id in STORE_IDS and message.context.sku in skus
        else:
            assert message.call_reason
    assert set(pages) == {"product", "category", "cart", "home"}
    assert pages.most_common(1)[0][0] == "product"


def test_popularity_is_skewed_towards_low_ranks():
    picks = Counter(zipf_picks(1000, 50_000, 1.0, random.Random(1)))
    assert picks[0] > picks[1] > picks[9] > picks[99]
    assert picks[0] / picks[9] == pytest.approx(10, rel=0.25)  # 1/k
    assert len(picks) > 700  # the long tail is visited too


def test_popular_customers_are_a_seeded_shuffle_not_the_first_ids():
    assert by_popularity(CUSTOMERS, 1) == by_popularity(CUSTOMERS, 1)
    assert by_popularity(CUSTOMERS, 1)[:10] != CUSTOMERS[:10]


def test_ingest_batches_have_unique_ids_and_valid_subjects():
    subjects = ingest_subjects(CUSTOMERS, 2000, seed=1, s=Mix().zipf_s)
    now = Timestamp(seconds=1_700_000_000)
    rng = random.Random(2)
    first = event_batch("run1", 0, 300, subjects, 0, SKUS, rng, now, by_identifier=0.1)
    second = event_batch("run1", 1, 300, subjects, 300, SKUS, rng, now, by_identifier=0.1)
    ids = [e.event_id for batch in (first, second) for e in batch.events]
    assert len(ids) == len(set(ids)) == 600
    assert all(i.startswith("bench-run1-") for i in ids)
    by_email = [e for e in first.events if not e.customer_id]
    assert 0 < len(by_email) < 80 and all(e.identifiers[0].value.endswith("@example.com") for e in by_email)
    kinds = Counter(e.WhichOneof("payload") for e in first.events)
    assert set(kinds) == {"page_view", "product_view", "cart_change"}
    assert all(e.occurred_at == now for e in first.events)
