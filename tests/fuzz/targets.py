"""The five services as fuzz targets: each wired on SQLite with seeded data, plus valid example requests.

A target is started once per test module (`start_target(name)`) and serves every example; its valid examples are
what `strategies.mutations` perturbs, and `probe` is a valid call that must still succeed after the fuzzing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from nextbest.common.v1 import common_pb2 as common
from nextbest.decision.v1 import decision_service_pb2 as decision_pb
from nextbest.identity.v1 import identity_service_pb2 as identity_pb
from nextbest.identity.v1 import identity_service_pb2_grpc as identity_grpc
from nextbest.inventory.v1 import inventory_service_pb2 as inventory_pb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from nextbest.profile.v1 import profile_service_pb2 as profile_pb
from nextbest.profile.v1 import profile_service_pb2_grpc as profile_grpc
from nextbest.scoring.v1 import scoring_service_pb2 as scoring_pb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc

from libs.clients import open_channel
from libs.protoconv import to_duration, to_timestamp
from libs.server import GrpcServer, ServiceApp
from libs.settings import CommonSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.inventory.app import build as build_inventory
from services.inventory.importer import import_stock_csv
from services.inventory.settings import InventorySettings
from services.profile.app import build as build_profile
from services.profile.settings import ProfileSettings
from services.scoring.app import build as build_scoring
from services.scoring.settings import ScoringSettings
from services.scoring.training import train_binary_model
from tests.integration.decision_fakes import start_mesh
from tests.unit.test_scoring_training import FEATURES, synthetic_dataset

EMAIL, PHONE = common.IDENTIFIER_TYPE_EMAIL, common.IDENTIFIER_TYPE_PHONE
WEB, POS, CALL_CENTER = common.CHANNEL_WEB, common.CHANNEL_POS, common.CHANNEL_CALL_CENTER


@dataclass
class Target:
    """A running service: a channel to it, valid requests per method name, and a still-serving probe."""

    service: ServiceDescriptor
    channel: grpc.aio.Channel
    examples: dict[str, list[Message]]
    probe: Callable[[], Awaitable[None]]
    #: What the server wiring exposes (repositories, fakes), for regression tests that look inside.
    parts: dict[str, object] = field(default_factory=dict)


class Servers:
    """Starts ServiceApps on port 0 for the life of an AsyncExitStack (a module-scoped `serve`)."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self._stack = stack
        self.started: list[tuple[GrpcServer, grpc.aio.Channel]] = []

    async def __call__(self, app: ServiceApp) -> tuple[GrpcServer, grpc.aio.Channel]:
        server = GrpcServer(app, "127.0.0.1", 0, grace=0.5)
        port = await server.start()
        self._stack.push_async_callback(server.stop)
        channel = open_channel(f"127.0.0.1:{port}")
        self._stack.push_async_callback(channel.close)
        self.started.append((server, channel))
        return server, channel


def _ident(kind: int, value: str) -> common.Identifier:
    return common.Identifier(type=kind, value=value)


def _sqlite(folder: Path, name: str) -> str:
    return f"sqlite+aiosqlite:///{folder / f'{name}.db'}"


async def _identity(serve: Servers, folder: Path) -> Target:
    settings = IdentitySettings(database_url=_sqlite(folder, "identity"), port=0, common=CommonSettings(data_dir=folder))
    server, channel = await serve(build_identity(settings))
    stub = identity_grpc.IdentityServiceStub(channel)
    traits = identity_pb.PersonTraits(given_name="Ann", surname="Lee", date_of_birth="1990-04-01", postcode="94110")
    ann = (
        await stub.Resolve(
            identity_pb.ResolveRequest(identifiers=[_ident(EMAIL, "ann@example.com")], create_if_missing=True),
            timeout=5,
        )
    ).customer_id
    bob = (
        await stub.Resolve(
            identity_pb.ResolveRequest(
                identifiers=[_ident(PHONE, "+14155550100")], create_if_missing=True, traits=traits
            ),
            timeout=5,
        )
    ).customer_id
    consent = identity_pb.Consent(purpose=identity_pb.CONSENT_PURPOSE_MARKETING, channel=WEB, granted=True, source="web")
    examples = {
        "Resolve": [
            identity_pb.ResolveRequest(identifiers=[_ident(EMAIL, "ann@example.com")]),
            identity_pb.ResolveRequest(
                identifiers=[_ident(PHONE, "(415) 555-0199")], create_if_missing=True, traits=traits
            ),
        ],
        "GetCustomer": [identity_pb.GetCustomerRequest(customer_id=ann)],
        "SetConsent": [identity_pb.SetConsentRequest(customer_id=ann, consents=[consent])],
        "GetConsent": [
            identity_pb.GetConsentRequest(customer_id=ann, purpose=identity_pb.CONSENT_PURPOSE_MARKETING, channel=WEB),
            identity_pb.GetConsentRequest(customer_id=ann, include_history=True),
        ],
        "Merge": [
            identity_pb.MergeRequest(survivor_customer_id=ann, merged_customer_id=bob, reason="same", actor="op")
        ],
        "Unmerge": [identity_pb.UnmergeRequest(merge_id="m_" + "0" * 20, reason="mistake", actor="op")],
        "Forget": [identity_pb.ForgetRequest(customer_id=bob, reason="erasure request", actor="op")],
        "ListLineage": [identity_pb.ListLineageRequest(after_seq=1, limit=10)],
    }

    async def probe() -> None:
        created = await stub.Resolve(
            identity_pb.ResolveRequest(identifiers=[_ident(EMAIL, "after-fuzz@example.com")], create_if_missing=True),
            timeout=5,
        )
        found = await stub.GetCustomer(identity_pb.GetCustomerRequest(customer_id=created.customer_id), timeout=5)
        assert [(i.type, i.value) for i in found.identifiers] == [(EMAIL, "after-fuzz@example.com")]

    return Target(SERVICES["identity"], channel, examples, probe, {"port": server.port})


def _profile_events() -> list[profile_pb.Event]:
    now = datetime.now(UTC).replace(microsecond=0)

    def event(event_id: str, hours_ago: float, **payload) -> profile_pb.Event:
        return profile_pb.Event(
            event_id=event_id,
            customer_id="c-1",
            occurred_at=to_timestamp(now - timedelta(hours=hours_ago)),
            source="fuzz",
            **payload,
        )

    line = profile_pb.OrderLine(sku="SKU-1", quantity=2, unit_price=40.0, list_price=50.0, category="tops")
    return [
        event("e-buy", 48, purchase=profile_pb.Purchase(order_id="o-1", lines=[line], shipped=True, channel=WEB)),
        event(
            "e-ret",
            24,
            product_return=profile_pb.ProductReturn(
                order_id="o-1",
                lines=[profile_pb.ReturnLine(sku="SKU-1", quantity=1, refund_amount=40.0)],
                method=profile_pb.RETURN_METHOD_STORE,
            ),
        ),
        event("e-view", 5, product_view=profile_pb.ProductView(sku="SKU-9", dwell=to_duration(timedelta(seconds=42)))),
        event(
            "e-cart",
            4,
            cart_change=profile_pb.CartChange(action=profile_pb.CART_ACTION_ADD, sku="SKU-9", quantity=2, unit_price=15),
        ),
        event("e-loyal", 3, loyalty_change=profile_pb.LoyaltyChange(points_delta=250, tier=profile_pb.LOYALTY_TIER_GOLD)),
        event("e-pref", 2, preference_update=profile_pb.PreferenceUpdate(sizes=["M"], shipping_method="express")),
        event(
            "e-offer",
            1,
            offer_response=profile_pb.OfferResponse(
                decision_id="d-1", offer_id="off-1", response=profile_pb.OFFER_RESPONSE_TYPE_ACCEPT
            ),
        ),
    ]


async def _profile(serve: Servers, folder: Path) -> Target:
    identity = await _identity(serve, folder)
    settings = ProfileSettings(
        database_url=_sqlite(folder, "profile"),
        port=0,
        identity_target=f"127.0.0.1:{identity.parts['port']}",
        common=CommonSettings(data_dir=folder),
        max_batch=50,
    )
    _, channel = await serve(build_profile(settings))
    stub = profile_grpc.ProfileServiceStub(channel)
    events = _profile_events()
    await stub.IngestEvents(profile_pb.IngestEventsRequest(events=events), timeout=10)
    with_email = profile_pb.Event()
    with_email.CopyFrom(events[2])
    with_email.event_id, with_email.customer_id = "e-anon", ""
    with_email.identifiers.append(_ident(EMAIL, "ann@example.com"))
    segment = profile_pb.Segment(name="gold", expression='loyalty_tier == "gold"', description="gold members")
    await stub.PutSegment(profile_pb.PutSegmentRequest(segment=segment), timeout=10)
    examples = {
        "IngestEvents": [profile_pb.IngestEventsRequest(events=events), profile_pb.IngestEventsRequest(events=[with_email])],
        "StreamEvents": [profile_pb.StreamEventsRequest(events=events[:3])],
        "GetProfile": [
            profile_pb.GetProfileRequest(customer_id="c-1", include_features=True),
            profile_pb.GetProfileRequest(customer_id="c-1", read_mask={"paths": ["traits.total_spend", "segments"]}),
        ],
        "GetFeatures": [profile_pb.GetFeaturesRequest(customer_id="c-1", names=["cust_order_count"])],
        "PutSegment": [
            profile_pb.PutSegmentRequest(segment=segment, expected_version=1),
            profile_pb.PutSegmentRequest(segment=profile_pb.Segment(name="spenders", expression="total_spend >= 50.0")),
        ],
        "DeleteSegment": [profile_pb.DeleteSegmentRequest(name="spenders")],
        "ListSegmentMembers": [profile_pb.ListSegmentMembersRequest(segment="gold", page_size=2)],
        "ListSegmentVersions": [profile_pb.ListSegmentVersionsRequest(name="gold", page_size=1)],
        "RefoldProfiles": [
            profile_pb.RefoldProfilesRequest(customer_ids=["c-1", "c-2"]),
            profile_pb.RefoldProfilesRequest(all=True, page_size=2),
        ],
        "ListFeatures": [profile_pb.ListFeaturesRequest(names=["order_count", "spend_90d"], page_size=2)],
    }

    async def probe() -> None:
        fresh = profile_pb.Event()
        fresh.CopyFrom(events[0])
        fresh.event_id, fresh.customer_id = "e-after-fuzz", "c-after"
        answer = await stub.IngestEvents(profile_pb.IngestEventsRequest(events=[fresh]), timeout=10)
        assert (answer.accepted, list(answer.rejected)) == (1, [])
        reply = await stub.GetProfile(profile_pb.GetProfileRequest(customer_id="c-after"), timeout=5)
        assert reply.profile.traits.order_count == 1

    return Target(SERVICES["profile"], channel, examples, probe)


async def _scoring(serve: Servers, folder: Path) -> Target:
    models = folder / "models"
    rows, labels = synthetic_dataset(300)
    train_binary_model(rows, labels, feature_names=FEATURES, models_dir=models, version="v1")
    train_binary_model(
        rows, labels, feature_names=FEATURES, models_dir=models, version="v2", status="candidate", parent_version="v1"
    )
    settings = ScoringSettings(
        database_url=_sqlite(folder, "scoring"), port=0, models_dir=models, common=CommonSettings(data_dir=folder)
    )
    _, channel = await serve(build_scoring(settings))
    stub = scoring_grpc.ScoringServiceStub(channel)
    candidates = [
        scoring_pb.Candidate(offer_id="o-1", offer_features={"offer_value": 1.5}),
        scoring_pb.Candidate(offer_id="o-2", offer_features={"offer_value": -0.5}),
    ]
    score = scoring_pb.ScoreRequest(customer_id="c_1", customer_features={"loyalty": 0.5, "noise": 0.1}, candidates=candidates)
    use_case = "offer_propensity"
    examples = {
        "Score": [score],
        "ListModels": [scoring_pb.ListModelsRequest(use_case=use_case, statuses=[scoring_pb.MODEL_STATUS_CHAMPION])],
        "GetModel": [scoring_pb.GetModelRequest(use_case=use_case, version="v1")],
        "PromoteModel": [
            scoring_pb.PromoteModelRequest(
                use_case=use_case, version="v2", target=scoring_pb.MODEL_STATUS_CHALLENGER, traffic_share=0.1
            )
        ],
        "RetireModel": [scoring_pb.RetireModelRequest(use_case=use_case, version="v2")],
        "Explain": [
            scoring_pb.ExplainRequest(
                customer_id="c_1", customer_features={"loyalty": 0.5}, candidates=candidates, top_k=2
            )
        ],
        "ScoreBatch": [
            scoring_pb.ScoreBatchRequest(
                columns=["offer_value", "loyalty", "noise"], values=[1.0, 0.5, 0.0, -1.0, 0.2, 0.3], row_ids=["a", "b"]
            )
        ],
    }

    async def probe() -> None:
        reply = await stub.Score(score, timeout=5)
        assert [s.offer_id for s in reply.scores] == ["o-1", "o-2"]
        assert all(0 < s.probability < 1 for s in reply.scores)

    return Target(SERVICES["scoring"], channel, examples, probe)


STOCK_CSV = """sku,product_id,size,colour,location_id,location_kind,on_hand
TEE-S-RED,TEE,S,red,store-1,store,4
TEE-M-RED,TEE,M,red,store-1,store,0
TEE-S-RED,TEE,S,red,dc-1,warehouse,100
CAP-1,CAP,,navy,dc-1,warehouse,7
"""


async def _inventory(serve: Servers, folder: Path) -> Target:
    settings = InventorySettings(database_url=_sqlite(folder, "inventory"), port=0, common=CommonSettings(data_dir=folder))
    stock = folder / "stock.csv"
    stock.write_text(STOCK_CSV)
    await import_stock_csv(settings, stock)
    _, channel = await serve(build_inventory(settings))
    stub = inventory_grpc.InventoryServiceStub(channel)
    examples = {
        "CheckAvailability": [
            inventory_pb.CheckAvailabilityRequest(skus=["TEE-S-RED"], location_ids=["store-1"]),
            inventory_pb.CheckAvailabilityRequest(product_ids=["TEE", "CAP"]),
        ],
        "UpdateStock": [
            inventory_pb.UpdateStockRequest(
                update_id="u-1",
                changes=[
                    inventory_pb.StockChange(sku="TEE-S-RED", location_id="store-1", adjust_by=-1),
                    inventory_pb.StockChange(sku="CAP-1", location_id="dc-1", set_on_hand=9),
                ],
            )
        ],
    }

    async def probe() -> None:
        reply = await stub.UpdateStock(
            inventory_pb.UpdateStockRequest(
                update_id="u-after-fuzz", changes=[inventory_pb.StockChange(sku="CAP-1", location_id="dc-1", set_on_hand=3)]
            ),
            timeout=5,
        )
        assert [(a.sku, a.location_id, a.on_hand) for a in reply.availability] == [("CAP-1", "dc-1", 3)]

    return Target(SERVICES["inventory"], channel, examples, probe)


async def _decision(serve: Servers, folder: Path) -> Target:
    mesh = await start_mesh(serve, folder, _sqlite(folder, "decision"))
    ann = common.CustomerRef(identifiers=[_ident(EMAIL, "ann@example.com")])
    web = decision_pb.DecideRequest(
        channel=WEB,
        customer=ann,
        context=decision_pb.DecisionContext(
            page="product",
            sku="TEE-M-WHT",
            dwell=to_duration(timedelta(seconds=40)),
            cart=[common.CartLine(sku="CAP-OS-RED", quantity=1, unit_price=20.0)],
        ),
        max_offers=5,
    )
    pos = decision_pb.DecideRequest(
        channel=POS, customer=common.CustomerRef(customer_id="c-ann"), context=decision_pb.DecisionContext(store_id="S1")
    )
    call = decision_pb.DecideRequest(
        channel=CALL_CENTER, customer=ann, context=decision_pb.DecisionContext(call_reason="complaint")
    )
    decided = await mesh.stub.Decide(web, timeout=5)
    examples = {
        "Decide": [web, pos, call],
        "RecordOutcome": [
            decision_pb.RecordOutcomeRequest(
                outcome_id="out-1",
                decision_id=decided.decision_id,
                offer_id=decided.offers[0].offer_id,
                type=decision_pb.OUTCOME_TYPE_PURCHASE,
                occurred_at=to_timestamp(datetime.now(UTC)),
                revenue=30.0,
            )
        ],
        "PrioritizeCall": [decision_pb.PrioritizeCallRequest(customer=ann, call_reason="cancel")],
        "Explain": [decision_pb.ExplainRequest(decision_id=decided.decision_id)],
        "GetReport": [
            decision_pb.GetReportRequest(
                start_time=to_timestamp(datetime.now(UTC) - timedelta(days=1)),
                group_by=[decision_pb.REPORT_DIMENSION_OFFER, decision_pb.REPORT_DIMENSION_CHANNEL],
                min_sample=1,
            )
        ],
    }

    async def probe() -> None:
        reply = await mesh.stub.Decide(web, timeout=5)
        assert reply.customer_id == "c-ann" and reply.offers
        explained = await mesh.stub.Explain(decision_pb.ExplainRequest(decision_id=reply.decision_id), timeout=5)
        assert explained.decision_id == reply.decision_id

    _, channel = serve.started[-1]  # start_mesh starts the decision service last
    return Target(SERVICES["decision"], channel, examples, probe, {"mesh": mesh})


#: The public services under test, by target name.
SERVICES = {
    "identity": identity_pb.DESCRIPTOR.services_by_name["IdentityService"],
    "profile": profile_pb.DESCRIPTOR.services_by_name["ProfileService"],
    "scoring": scoring_pb.DESCRIPTOR.services_by_name["ScoringService"],
    "inventory": inventory_pb.DESCRIPTOR.services_by_name["InventoryService"],
    "decision": decision_pb.DESCRIPTOR.services_by_name["DecisionService"],
}
BUILDERS = {
    "identity": _identity,
    "profile": _profile,
    "scoring": _scoring,
    "inventory": _inventory,
    "decision": _decision,
}


@asynccontextmanager
async def start_target(name: str, folder: Path) -> AsyncIterator[Target]:
    """One service (and what it needs) running until the block ends."""
    async with AsyncExitStack() as stack:
        yield await BUILDERS[name](Servers(stack), folder)
