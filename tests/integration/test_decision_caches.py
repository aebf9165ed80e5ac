"""The decision's customer caches against the REAL identity and profile services, on SQLite and PostgreSQL:
repeat decisions are served from the caches, every committed change (consent, profile events) drops the entry
through the owners' change feeds, and a lost feed empties the caches instead of serving stale answers."""

from __future__ import annotations

import asyncio

import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb
from nextbest.decision.v1 import decision_service_pb2_grpc as decision_grpc
from nextbest.identity.v1 import identity_service_pb2 as ipb
from nextbest.identity.v1 import identity_service_pb2_grpc as ipb_grpc
from nextbest.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from nextbest.profile.v1 import profile_service_pb2 as ppb
from nextbest.profile.v1 import profile_service_pb2_grpc as ppb_grpc
from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc

from libs.protoconv import to_timestamp, utcnow
from libs.server import Registration, ServiceApp
from libs.settings import CommonSettings
from services.decision.app import build as build_decision
from services.decision.settings import DecisionSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.profile.app import build as build_profile
from services.profile.settings import ProfileSettings
from tests.integration.decision_fakes import EMAIL, MARKETING, FakeInventory, FakeScoring, write_catalogue
from tests.integration.polling import until

pytestmark = pytest.mark.integration

WEB = common_pb2.CHANNEL_WEB
ANN = common_pb2.Identifier(type=EMAIL, value="ann@example.com")


class Mesh:
    """Real identity, profile and decision; fake scoring and inventory."""

    async def start(self, serve, tmp_path, database_url: str) -> Mesh:
        common = CommonSettings(data_dir=tmp_path)
        identity_server, identity_channel = await serve(
            build_identity(IdentitySettings(database_url=database_url, port=0, common=common))
        )
        identity_target = f"127.0.0.1:{identity_server.port}"
        self.profile_server, profile_channel = await serve(
            build_profile(
                ProfileSettings(database_url=database_url, port=0, identity_target=identity_target, common=common)
            )
        )
        targets = {"identity_target": identity_target, "profile_target": f"127.0.0.1:{self.profile_server.port}"}
        for name, fake, add in (
            ("scoring", FakeScoring(), scoring_grpc.add_ScoringServiceServicer_to_server),
            ("inventory", FakeInventory(), inventory_grpc.add_InventoryServiceServicer_to_server),
        ):
            server, _ = await serve(ServiceApp(f"fake-{name}", [Registration(add, fake, f"nextbest.{name}.v1.x")]))
            targets[f"{name}_target"] = f"127.0.0.1:{server.port}"
        self.identity = ipb_grpc.IdentityServiceStub(identity_channel)
        self.profile = ppb_grpc.ProfileServiceStub(profile_channel)
        self.app = build_decision(
            DecisionSettings(
                database_url=database_url, port=0, common=common, catalogue_dir=write_catalogue(tmp_path / "cat"),
                budget_web_ms=2000, **targets,
            )
        )
        _, decision_channel = await serve(self.app)
        self.decision = decision_grpc.DecisionServiceStub(decision_channel)
        self.caches = self.app.parts["caches"]
        feeds = {subscription.name: subscription for subscription in self.app.parts["subscriptions"]}
        self.identity_feed, self.profile_feed = feeds["identity"], feeds["profile"]
        await asyncio.wait_for(self.identity_feed.subscribed.wait(), 5)
        await asyncio.wait_for(self.profile_feed.subscribed.wait(), 5)
        reply = await self.identity.Resolve(ipb.ResolveRequest(identifiers=[ANN], create_if_missing=True), timeout=5)
        self.customer_id = reply.customer_id
        await self.set_marketing(True)
        return self

    async def set_marketing(self, granted: bool) -> None:
        await self.identity.SetConsent(
            ipb.SetConsentRequest(
                customer_id=self.customer_id,
                consents=[ipb.Consent(purpose=MARKETING, channel=WEB, granted=granted, source="test")],
            ),
            timeout=5,
        )

    async def ingest(self, event_id: str, **payload) -> None:
        event = ppb.Event(
            event_id=event_id, customer_id=self.customer_id, occurred_at=to_timestamp(utcnow()), source="test",
            **payload,
        )
        reply = await self.profile.IngestEvents(ppb.IngestEventsRequest(events=[event]), timeout=5)
        assert reply.accepted == 1

    async def decide(self) -> pb.DecideResponse:
        request = pb.DecideRequest(channel=WEB, customer=common_pb2.CustomerRef(identifiers=[ANN]), max_offers=10)
        return await self.decision.Decide(request, timeout=5)


@pytest.fixture
async def mesh(serve, tmp_path, database_url) -> Mesh:
    return await Mesh().start(serve, tmp_path, database_url)


def offer_ids(reply: pb.DecideResponse) -> set[str]:
    return {offer.offer_id for offer in reply.offers}


async def test_repeat_decisions_are_served_from_the_caches(mesh):
    first = await mesh.decide()
    second = await mesh.decide()
    assert first.customer_id == second.customer_id == mesh.customer_id and not second.degraded
    assert offer_ids(first) == offer_ids(second)
    for cache in (mesh.caches.resolutions, mesh.caches.consents, mesh.caches.profiles):
        assert (cache.stats.misses, cache.stats.hits) == (1, 1), cache.name


async def test_a_withdrawn_consent_reaches_the_next_decision(mesh):
    assert {"tee-discount", "free-shipping"} <= offer_ids(await mesh.decide())
    await mesh.set_marketing(False)
    await until(lambda: len(mesh.caches.consents) == 0)  # the feed dropped the entry
    reply = await mesh.decide()
    assert not reply.degraded and not {"tee-discount", "free-shipping"} & offer_ids(reply)


async def test_a_profile_event_reaches_the_next_decision(mesh):
    assert "gold-perk" not in offer_ids(await mesh.decide())  # a new customer: no tier yet
    await mesh.ingest("e-gold", loyalty_change=ppb.LoyaltyChange(points_delta=500, tier=ppb.LOYALTY_TIER_GOLD))
    await until(lambda: len(mesh.caches.profiles) == 0)
    assert "gold-perk" in offer_ids(await mesh.decide())
    assert len(mesh.caches.profiles) == 1  # and the new profile is cached again


async def test_a_profile_that_cannot_answer_falls_back_to_the_last_known_one_flagged_stale(mesh):
    await mesh.ingest("e-gold", loyalty_change=ppb.LoyaltyChange(points_delta=500, tier=ppb.LOYALTY_TIER_GOLD))
    await until(lambda: len(mesh.caches.profiles) == 0)
    assert "gold-perk" in offer_ids(await mesh.decide())  # cached again, then...
    await mesh.ingest("e-view", page_view=ppb.PageView(page="home"))  # ...changed: dropped, kept as last known
    await until(lambda: len(mesh.caches.profiles) == 0)
    await mesh.profile_server.stop()
    reply = await mesh.decide()
    assert list(reply.degraded_reasons) == ["profile_stale"]
    assert "gold-perk" in offer_ids(reply)  # still treated as the gold customer, not as a stranger


async def test_a_lost_feed_empties_and_bypasses_the_caches(mesh):
    await mesh.decide()
    assert len(mesh.caches.profiles) == 1
    await mesh.profile_server.stop()
    await until(lambda: not mesh.caches.profiles.live)
    assert len(mesh.caches.profiles) == 0
    reply = await mesh.decide()  # the profile is down: never served from the cache as if current (and this new
    assert list(reply.degraded_reasons) == ["profile_unavailable"]  # customer has no last-known profile either)
    assert mesh.caches.consents.live and len(mesh.caches.consents) == 1  # identity's feed is unaffected
