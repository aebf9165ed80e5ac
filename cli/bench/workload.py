"""What the generator sends: the seeded customers, a skewed popularity over them, and prebuilt requests.

Customers come from the identity database (the only place their ids exist: identity assigns them). Popularity is
Zipf-like: the customer of rank k (after a seeded shuffle) is drawn with weight 1/k^s. Requests are planned and
serialised once, before any timed phase, so sending one costs the generator only the gRPC call itself.

The mix: 70% web Decide, 20% POS Decide, 10% call-centre PrioritizeCall; half of the customers are named by
customer id, the rest only by the identifiers that touchpoint would have (web: e-mail, cookie, device or account;
POS: loyalty card, else phone or e-mail; call centre: phone, else e-mail), plus a few anonymous web visitors.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate
from pathlib import Path

import orjson
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as decision_pb
from nextbest.profile.v1 import profile_service_pb2 as profile_pb
from sqlalchemy import select

from cli.client import CHANNELS as CHANNEL_ENUMS
from cli.client import IDENTIFIER_FLAGS
from cli.demo.retailer import CONTACT_REASONS, STORE_IDS
from libs.db import connected
from services.identity.storage import identifiers as identity_identifiers

from .stats import CHANNELS

#: Client deadlines (seconds): the decision service's default budgets per channel (web 100 ms, POS and call
#: centre 250 ms); outcomes are plain writes.
BUDGETS = {"web": 0.100, "pos": 0.250, "call_center": 0.250, "outcome": 1.0}
OUTCOME_TYPES = (
    decision_pb.OUTCOME_TYPE_IMPRESSION,
    decision_pb.OUTCOME_TYPE_CLICK,
    decision_pb.OUTCOME_TYPE_ACCEPT,
    decision_pb.OUTCOME_TYPE_DECLINE,
)


@dataclass(frozen=True)
class Customer:
    customer_id: str
    #: Identifier kind (identity's names: "email", "loyalty_card", ...) -> value.
    identifiers: dict[str, str]


@dataclass(frozen=True)
class Sku:
    sku: str
    price: float
    category: str


@dataclass(frozen=True)
class Mix:
    """Shares of the traffic; see the module docstring."""

    channels: dict[str, float] = field(default_factory=lambda: {"web": 0.7, "pos": 0.2, "call_center": 0.1})
    by_id: float = 0.5
    anonymous_web: float = 0.05
    zipf_s: float = 1.0
    #: Ingested events that carry only the customer's e-mail (the profile resolves them through identity).
    ingest_by_identifier: float = 0.02


@dataclass(frozen=True)
class PlannedRequest:
    channel: int  # index in stats.CHANNELS
    method: str  # "Decide" or "PrioritizeCall"
    payload: bytes
    timeout: float


async def load_customers(identity_url: str) -> list[Customer]:
    """Every customer and their identifiers, read from the identity database, in customer-id order."""
    query = select(identity_identifiers.c.customer_id, identity_identifiers.c.type, identity_identifiers.c.value)
    async with connected(identity_url) as connection:
        rows = (await connection.execute(query)).all()
    grouped: dict[str, dict[str, str]] = {}
    for customer_id, kind, value in rows:
        grouped.setdefault(customer_id, {})[kind] = value
    return [Customer(customer_id, grouped[customer_id]) for customer_id in sorted(grouped)]


def load_skus(catalogue_dir: Path) -> list[Sku]:
    """Every SKU variant of the seeded catalogue (products.json), with its product's price and category."""
    products = orjson.loads((catalogue_dir / "products.json").read_bytes())["products"]
    return [Sku(v["sku"], float(p["price"]), p["category"]) for p in products for v in p["variants"]]


def by_popularity(customers: Sequence[Customer], seed: int) -> list[Customer]:
    """The customers in popularity order (a seeded shuffle: the cast and low ids are not favoured)."""
    ordered = list(customers)
    random.Random(f"popularity:{seed}").shuffle(ordered)
    return ordered


class Zipf:
    """Ranks in [0, n) drawn with probability proportional to 1/(rank+1)^s."""

    def __init__(self, n: int, s: float) -> None:
        self._cumulative = list(accumulate(1.0 / (k**s) for k in range(1, n + 1)))

    def pick(self, rng: random.Random) -> int:
        return bisect_right(self._cumulative, rng.random() * self._cumulative[-1])


def zipf_picks(n: int, count: int, s: float, rng: random.Random) -> list[int]:
    zipf = Zipf(n, s)
    return [zipf.pick(rng) for _ in range(count)]


def plan_requests(customers: Sequence[Customer], skus: Sequence[Sku], count: int, seed: int,
                  mix: Mix = Mix()) -> list[PlannedRequest]:
    """`count` serialised requests following the mix, customers drawn by popularity (deterministic per seed)."""
    rng = random.Random(f"requests:{seed}")
    popular = by_popularity(customers, seed)
    zipf = Zipf(len(popular), mix.zipf_s)
    names, weights = zip(*mix.channels.items(), strict=True)
    plan = []
    for _ in range(count):  # one request at a time from one stream: a longer plan extends a shorter one
        channel = rng.choices(names, weights)[0]
        ref = customer_ref(popular[zipf.pick(rng)], channel, rng, mix)
        if channel == "call_center":
            message = decision_pb.PrioritizeCallRequest(customer=ref, call_reason=rng.choice(CONTACT_REASONS))
            method = "PrioritizeCall"
        else:
            context = web_context(skus, rng) if channel == "web" else pos_context(skus, rng)
            message = decision_pb.DecideRequest(channel=CHANNEL_ENUMS[channel], customer=ref, context=context)
            method = "Decide"
        plan.append(PlannedRequest(CHANNELS.index(channel), method, message.SerializeToString(), BUDGETS[channel]))
    return plan


def customer_ref(customer: Customer, channel: str, rng: random.Random, mix: Mix) -> common_pb2.CustomerRef:
    """By id, or by the identifiers this touchpoint would know (see the module docstring)."""
    if channel == "web" and rng.random() < mix.anonymous_web:
        return _ref(("cookie_id", f"ck-bench-{rng.getrandbits(64):016x}"))
    if rng.random() < mix.by_id:
        return common_pb2.CustomerRef(customer_id=customer.customer_id)
    known = customer.identifiers
    if channel == "web":
        kinds = [k for k in ("email", "cookie_id", "device_id", "account_id") if k in known]
        return _ref((kind := rng.choice(kinds), known[kind]))
    preferred = ("loyalty_card", "phone", "email") if channel == "pos" else ("phone", "email")
    kind = next(k for k in (*preferred, *known) if k in known)
    return _ref((kind, known[kind]))


def _ref(*pairs: tuple[str, str]) -> common_pb2.CustomerRef:
    return common_pb2.CustomerRef(
        identifiers=[common_pb2.Identifier(type=IDENTIFIER_FLAGS[kind], value=value) for kind, value in pairs]
    )


def _cart(skus: Sequence[Sku], rng: random.Random) -> list[common_pb2.CartLine]:
    return [
        common_pb2.CartLine(sku=item.sku, quantity=rng.choice((1, 1, 1, 2)), unit_price=item.price)
        for item in rng.sample(list(skus), rng.randint(1, 3))
    ]


def web_context(skus: Sequence[Sku], rng: random.Random) -> decision_pb.DecisionContext:
    """A product page (with dwell, sometimes a cart), a category page, the cart page or the home page."""
    page = rng.choices(("product", "category", "cart", "home"), (0.6, 0.15, 0.15, 0.1))[0]
    item = rng.choice(skus)
    if page == "product":
        context = decision_pb.DecisionContext(
            page="product", sku=item.sku, dwell=Duration(seconds=min(600, 1 + int(rng.expovariate(1 / 40))))
        )
        if rng.random() < 0.3:
            context.cart.extend(_cart(skus, rng))
        return context
    if page == "category":
        return decision_pb.DecisionContext(page=f"category/{item.category}")
    if page == "cart":
        return decision_pb.DecisionContext(page="cart", cart=_cart(skus, rng))
    return decision_pb.DecisionContext(page="home")


def pos_context(skus: Sequence[Sku], rng: random.Random) -> decision_pb.DecisionContext:
    """A store and the SKU the customer asks about, sometimes with a basket."""
    context = decision_pb.DecisionContext(store_id=rng.choice(STORE_IDS), sku=rng.choice(skus).sku)
    if rng.random() < 0.2:
        context.cart.extend(_cart(skus, rng))
    return context


def outcome_request(outcome_id: str, reply: decision_pb.DecideResponse, rng: random.Random,
                    now: datetime) -> bytes:
    """A RecordOutcome for one offer of a decision (impression, click, accept or decline)."""
    offer = rng.choice(reply.offers)
    occurred = Timestamp()
    occurred.FromDatetime(now)
    return decision_pb.RecordOutcomeRequest(
        outcome_id=outcome_id, decision_id=reply.decision_id, offer_id=offer.offer_id,
        type=rng.choice(OUTCOME_TYPES), occurred_at=occurred,
    ).SerializeToString()


@dataclass(frozen=True)
class IngestSubject:
    """Who a generated event is about: by id, or (identifier-only events) by e-mail."""

    customer_id: str
    email: str


def ingest_subjects(customers: Sequence[Customer], count: int, seed: int, s: float = 1.0) -> list[IngestSubject]:
    """`count` event subjects drawn with the same popularity as the decisions."""
    popular = by_popularity(customers, seed)
    picks = zipf_picks(len(popular), count, s, random.Random(f"ingest:{seed}"))
    return [IngestSubject(popular[r].customer_id, popular[r].identifiers.get("email", "")) for r in picks]


def event_id(run_id: str, batch: int, index: int) -> str:
    """Unique per run: the verification counts the rows whose id starts with `bench-{run_id}-`."""
    return f"bench-{run_id}-{batch:07d}-{index:04d}"


def event_batch(run_id: str, batch: int, size: int, subjects: Sequence[IngestSubject], start: int,
                skus: Sequence[Sku], rng: random.Random, now: Timestamp,
                by_identifier: float) -> profile_pb.IngestEventsRequest:
    """One IngestEvents batch of fresh touchpoint events (page views, product views, cart adds); the share
    `by_identifier` carries only the customer's e-mail, so the profile resolves it through identity."""
    events = []
    for index in range(size):
        subject = subjects[(start + index) % len(subjects)]
        event = profile_pb.Event(event_id=event_id(run_id, batch, index), occurred_at=now, source="web")
        if subject.email and rng.random() < by_identifier:
            event.identifiers.append(common_pb2.Identifier(type=common_pb2.IDENTIFIER_TYPE_EMAIL, value=subject.email))
        else:
            event.customer_id = subject.customer_id
        kind = rng.random()
        item = rng.choice(skus)
        if kind < 0.4:
            event.page_view.page = rng.choice(("home", f"category/{item.category}", "search"))
        elif kind < 0.8:
            event.product_view.sku = item.sku
            event.product_view.dwell.seconds = 1 + int(rng.expovariate(1 / 40))
        else:
            event.cart_change.action = profile_pb.CART_ACTION_ADD
            event.cart_change.sku = item.sku
            event.cart_change.quantity = 1
            event.cart_change.unit_price = item.price
        events.append(event)
    return profile_pb.IngestEventsRequest(events=events)
