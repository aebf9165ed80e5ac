"""Fake identity, profile, scoring and inventory servicers for the decision service's integration tests.

Each fake implements its generated servicer base class and runs in a real gRPC server (the `serve` fixture), so
the decision talks to it exactly as to the real service. Behaviour is configurable per test: data, a delay
(slow), a failure status (down), or a closed port (not started at all).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2_grpc as decision_grpc
from nextbest.identity.v1 import identity_service_pb2 as identity_pb
from nextbest.identity.v1 import identity_service_pb2_grpc as identity_grpc
from nextbest.inventory.v1 import inventory_service_pb2 as inventory_pb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from nextbest.profile.v1 import profile_service_pb2 as profile_pb
from nextbest.profile.v1 import profile_service_pb2_grpc as profile_grpc
from nextbest.scoring.v1 import scoring_service_pb2 as scoring_pb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc

from libs.errors import InvalidArgument, NotFound
from libs.server import Registration, ServiceApp
from libs.settings import CommonSettings
from services.decision.app import build
from services.decision.settings import DecisionSettings
from services.decision.storage import DecisionRepository

EMAIL = common_pb2.IDENTIFIER_TYPE_EMAIL
WEB, POS, CALL_CENTER = common_pb2.CHANNEL_WEB, common_pb2.CHANNEL_POS, common_pb2.CHANNEL_CALL_CENTER
MARKETING = identity_pb.CONSENT_PURPOSE_MARKETING

PRODUCTS = [
    {"product_id": "P-TEE", "name": "Organic Tee", "category": "tops", "price": 30.0, "variants": [
        {"sku": "TEE-S-WHT", "size": "S", "colour": "white"},
        {"sku": "TEE-M-WHT", "size": "M", "colour": "white"},
        {"sku": "TEE-L-WHT", "size": "L", "colour": "white"},
        {"sku": "TEE-L-BLK", "size": "L", "colour": "black"},
    ]},
    {"product_id": "P-SNEAK", "name": "Court Sneaker", "category": "shoes", "price": 90.0, "variants": [
        {"sku": "SNK-41-WHT", "size": "41", "colour": "white"},
        {"sku": "SNK-42-WHT", "size": "42", "colour": "white"},
        {"sku": "SNK-42-BLK", "size": "42", "colour": "black"},
    ]},
    {"product_id": "P-BOOT", "name": "Trail Boot", "category": "shoes", "price": 150.0, "variants": [
        {"sku": "BOOT-42-BRN", "size": "42", "colour": "brown"},
    ]},
    {"product_id": "P-CAP", "name": "Logo Cap", "category": "accessories", "price": 20.0, "variants": [
        {"sku": "CAP-OS-RED", "size": "OS", "colour": "red"},
    ]},
]
OFFERS = [
    {"id": "tee-discount", "name": "15% off the Organic Tee", "type": "discount", "channels": ["web", "pos"],
     "value": 6.0, "base_propensity": 0.2, "discount_pct": 15, "product_id": "P-TEE", "allow_same_type": True},
    {"id": "sneaker-discount", "name": "10% off Court Sneakers", "type": "discount", "channels": ["web", "pos"],
     "value": 15.0, "base_propensity": 0.1, "discount_pct": 10, "product_id": "P-SNEAK", "allow_same_type": True},
    {"id": "sneaker-preorder", "name": "Pre-order Court Sneakers", "type": "pre_order", "channels": ["web"],
     "value": 10.0, "base_propensity": 0.3, "product_id": "P-SNEAK"},
    {"id": "free-shipping", "name": "Free shipping today", "type": "free_shipping", "channels": ["web", "call_center"],
     "value": 4.0, "base_propensity": 0.4, "script": "Waive the shipping fee on their next order."},
    {"id": "gold-perk", "name": "Double points weekend", "type": "loyalty_perk",
     "channels": ["web", "pos", "call_center"], "value": 8.0, "lever": 1.5, "base_propensity": 0.3,
     "eligibility": {"min_tier": "gold"}, "script": "Thank them for their loyalty: double points this weekend."},
    {"id": "cap-cross-sell", "name": "Add the Logo Cap", "type": "cross_sell", "channels": ["web"],
     "value": 3.0, "base_propensity": 0.2, "product_id": "P-CAP"},
    {"id": "callback", "name": "Priority callback", "type": "service_action", "channels": ["call_center"],
     "value": 2.0, "base_propensity": 0.5, "script": "Offer a callback from a senior agent within the hour."},
]
LOCATIONS = {"DC1": inventory_pb.LOCATION_KIND_WAREHOUSE, "S1": inventory_pb.LOCATION_KIND_STORE,
             "S2": inventory_pb.LOCATION_KIND_STORE, "S3": inventory_pb.LOCATION_KIND_STORE}
STOCK = {
    ("TEE-M-WHT", "DC1"): 5, ("TEE-L-BLK", "DC1"): 2, ("SNK-41-WHT", "DC1"): 1, ("SNK-42-WHT", "DC1"): 3,
    ("CAP-OS-RED", "DC1"): 10, ("BOOT-42-BRN", "DC1"): 1,
    ("TEE-M-WHT", "S1"): 1, ("SNK-42-BLK", "S1"): 2,
    ("SNK-42-WHT", "S2"): 1, ("SNK-42-WHT", "S3"): 4,
}


def write_catalogue(folder: Path, offers: list[dict] | None = None, products: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "offers.json").write_bytes(orjson.dumps({"version": "test-1", "offers": offers or OFFERS}))
    (folder / "products.json").write_bytes(orjson.dumps({"products": products or PRODUCTS}))
    return folder


@dataclass
class Behaviour:
    """How a fake answers: after `delay` seconds, with `fail` as the status when set."""

    delay: float = 0.0
    fail: grpc.StatusCode | None = None

    async def apply(self, context: grpc.aio.ServicerContext) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            await context.abort(self.fail, "fake dependency failure")


class FakeIdentity(identity_grpc.IdentityServiceServicer):
    def __init__(self) -> None:
        self.customers = {"ann@example.com": "c-ann", "bob@example.com": "c-bob"}
        #: customer id -> channels with marketing consent granted
        self.marketing = {"c-ann": {WEB, POS, CALL_CENTER}, "c-bob": {WEB, POS, CALL_CENTER}}
        self.resolve = Behaviour()
        self.consent = Behaviour()
        self.resolve_requests: list[identity_pb.ResolveRequest] = []

    async def Resolve(self, request, context):
        self.resolve_requests.append(request)
        await self.resolve.apply(context)
        for index, identifier in enumerate(request.identifiers):
            if "@" not in identifier.value:
                raise InvalidArgument(f"identifiers[{index}].value", "not a valid e-mail address")
        for identifier in request.identifiers:
            if identifier.value in self.customers:
                return identity_pb.ResolveResponse(
                    customer_id=self.customers[identifier.value], match_method=identity_pb.MATCH_METHOD_IDENTIFIER
                )
        raise NotFound("no customer matches the identifiers")

    async def GetConsent(self, request, context):
        await self.consent.apply(context)
        granted = self.marketing.get(request.customer_id, set())
        return identity_pb.GetConsentResponse(
            consents=[identity_pb.Consent(purpose=MARKETING, channel=c, granted=True) for c in sorted(granted)]
        )

    async def ListLineage(self, request, context):
        """No merges or erasures (the decision's lineage follower polls this)."""
        return identity_pb.ListLineageResponse()


def gold_profile() -> tuple[profile_pb.Profile, dict[str, float]]:
    traits = profile_pb.Traits(
        total_spend=2800.0, net_value=2500.0, order_count=12, average_order_value=233.0,
        loyalty_tier=profile_pb.LOYALTY_TIER_GOLD, shipping_paid_share=0.7, full_price_share=0.5,
        preferences=profile_pb.Preferences(sizes=["L"], colours=["black"], shipping_method="express"),
    )
    return profile_pb.Profile(customer_id="c-ann", traits=traits), {"cust_order_count": 12.0, "cust_net_value": 2500.0}


class FakeProfile(profile_grpc.ProfileServiceServicer):
    def __init__(self) -> None:
        self.profiles = {"c-ann": gold_profile()}  # c-bob has never been seen: NOT_FOUND
        self.get = Behaviour()
        self.ingest = Behaviour()
        self.events: dict[str, profile_pb.Event] = {}
        self.ingest_calls = 0

    async def GetProfile(self, request, context):
        await self.get.apply(context)
        if request.customer_id not in self.profiles:
            raise NotFound(f"no profile for {request.customer_id}")
        profile, features = self.profiles[request.customer_id]
        return profile_pb.GetProfileResponse(profile=profile, features=features if request.include_features else {})

    async def IngestEvents(self, request, context):
        self.ingest_calls += 1
        await self.ingest.apply(context)
        accepted = duplicates = 0
        for event in request.events:
            if event.event_id in self.events:
                duplicates += 1
            else:
                self.events[event.event_id] = event
                accepted += 1
        return profile_pb.IngestEventsResponse(accepted=accepted, duplicates=duplicates)


def sent_offer_features(request: scoring_pb.ScoreRequest) -> dict[str, dict[str, float]]:
    """Each candidate's offer features by name, read back from the request's column block."""
    width = len(request.offer_columns)
    return {
        c.offer_id: dict(zip(request.offer_columns, request.offer_values[i * width : (i + 1) * width], strict=True))
        for i, c in enumerate(request.candidates)
    }


class FakeScoring(scoring_grpc.ScoringServiceServicer):
    def __init__(self) -> None:
        self.probabilities: dict[str, float] = {}
        self.default_probability = 0.1
        self.model_version = "m-test-3"
        self.behaviour = Behaviour()
        self.requests: list[scoring_pb.ScoreRequest] = []

    async def Score(self, request, context):
        self.requests.append(request)
        await self.behaviour.apply(context)
        return scoring_pb.ScoreResponse(
            model_name="offer_propensity",
            model_version=self.model_version,
            scores=[
                scoring_pb.OfferScore(
                    offer_id=c.offer_id, probability=self.probabilities.get(c.offer_id, self.default_probability)
                )
                for c in request.candidates
            ],
        )


class FakeInventory(inventory_grpc.InventoryServiceServicer):
    def __init__(self) -> None:
        self.on_hand = dict(STOCK)
        self.behaviour = Behaviour()
        self.requests: list[inventory_pb.CheckAvailabilityRequest] = []

    async def CheckAvailability(self, request, context):
        self.requests.append(request)
        await self.behaviour.apply(context)
        locations = list(request.location_ids) or list(LOCATIONS)
        products, skus = set(request.product_ids), set(request.skus)
        rows = [
            inventory_pb.Availability(
                sku=v["sku"], product_id=p["product_id"], size=v["size"], colour=v["colour"], location_id=loc,
                location_kind=LOCATIONS[loc], on_hand=self.on_hand.get((v["sku"], loc), 0),
            )
            for p in PRODUCTS
            for v in p["variants"]
            if p["product_id"] in products or v["sku"] in skus
            for loc in locations
        ]
        return inventory_pb.CheckAvailabilityResponse(availability=rows)


def closed_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Mesh:
    """The real decision service wired to the fakes."""

    stub: decision_grpc.DecisionServiceStub
    app: ServiceApp
    identity: FakeIdentity = field(default_factory=FakeIdentity)
    profile: FakeProfile = field(default_factory=FakeProfile)
    scoring: FakeScoring = field(default_factory=FakeScoring)
    inventory: FakeInventory = field(default_factory=FakeInventory)

    @property
    def repository(self) -> DecisionRepository:
        return self.app.parts["repository"]


async def start_mesh(serve, tmp_path: Path, database_url: str, *, closed: tuple[str, ...] = (), **overrides) -> Mesh:
    """Start the fakes (except the `closed` ones) and the decision service pointing at them.

    Budgets default to 2 s so a busy test machine does not degrade the happy paths; tests of the budget set it.
    """
    fakes = {"identity": FakeIdentity(), "profile": FakeProfile(), "scoring": FakeScoring(),
             "inventory": FakeInventory()}
    adders = {
        "identity": (identity_grpc.add_IdentityServiceServicer_to_server, "nextbest.identity.v1.IdentityService"),
        "profile": (profile_grpc.add_ProfileServiceServicer_to_server, "nextbest.profile.v1.ProfileService"),
        "scoring": (scoring_grpc.add_ScoringServiceServicer_to_server, "nextbest.scoring.v1.ScoringService"),
        "inventory": (inventory_grpc.add_InventoryServiceServicer_to_server, "nextbest.inventory.v1.InventoryService"),
    }
    targets = {}
    for name, fake in fakes.items():
        if name in closed:
            targets[name] = f"127.0.0.1:{closed_port()}"
            continue
        add, full_name = adders[name]
        server, _ = await serve(ServiceApp(f"fake-{name}", [Registration(add, fake, full_name)]))
        targets[name] = f"127.0.0.1:{server.port}"
    if "catalogue_dir" not in overrides:
        overrides["catalogue_dir"] = write_catalogue(tmp_path / "catalogue")
    settings = DecisionSettings(
        database_url=database_url,
        port=0,
        common=CommonSettings(data_dir=tmp_path),
        **{f"{name}_target": target for name, target in targets.items()},
        **{"budget_web_ms": 2000, "budget_pos_ms": 2000, "budget_call_center_ms": 2000, **overrides},
    )
    app = build(settings)
    _, channel = await serve(app)
    return Mesh(decision_grpc.DecisionServiceStub(channel), app, **fakes)
