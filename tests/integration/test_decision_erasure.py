"""Identity's Forget reaching the decision log, with the REAL identity and decision services on real SQLite and
PostgreSQL (fake profile, scoring and inventory): the erased customer's decisions and outcomes, and those of the
customer merged into it, end up under pseudonyms, the report still adds up, a later outcome on an old decision is
recorded but never forwarded, and each journal entry is applied once across replicas and restarts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb
from nextbest.decision.v1 import decision_service_pb2_grpc as decision_grpc
from nextbest.identity.v1 import identity_service_pb2 as ipb
from nextbest.identity.v1 import identity_service_pb2_grpc as ipb_grpc
from nextbest.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from nextbest.profile.v1 import profile_service_pb2_grpc as profile_grpc
from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc
from sqlalchemy import select

from libs.db import create_engine
from libs.protoconv import to_timestamp, utcnow
from libs.server import Registration, ServiceApp
from libs.settings import CommonSettings
from services.decision.app import build as build_decision
from services.decision.domain.lineage import ERASED_NOTE, LineageFollower, is_pseudonym
from services.decision.gateways import IdentityGateway
from services.decision.settings import DecisionSettings
from services.decision.storage import DecisionRepository, decisions, lineage_cursor, outcomes
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from tests.integration.decision_fakes import (
    EMAIL,
    MARKETING,
    WEB,
    FakeInventory,
    FakeProfile,
    FakeScoring,
    write_catalogue,
)
from tests.integration.polling import until

pytestmark = pytest.mark.integration

STEWARD = {"reason": "erasure request #12", "actor": "steward-1"}


class Mesh:
    """Real identity and decision (sharing the test database); fake profile, scoring and inventory."""

    async def start(self, serve, tmp_path, database_url: str, lineage_poll_seconds: float) -> Mesh:
        common = CommonSettings(data_dir=tmp_path)
        identity_server, identity_channel = await serve(
            build_identity(IdentitySettings(database_url=database_url, port=0, common=common))
        )
        self.identity_target = f"127.0.0.1:{identity_server.port}"
        self.identity = ipb_grpc.IdentityServiceStub(identity_channel)
        self.profile = FakeProfile()
        targets = {"identity_target": self.identity_target}
        for name, fake, add in (
            ("profile", self.profile, profile_grpc.add_ProfileServiceServicer_to_server),
            ("scoring", FakeScoring(), scoring_grpc.add_ScoringServiceServicer_to_server),
            ("inventory", FakeInventory(), inventory_grpc.add_InventoryServiceServicer_to_server),
        ):
            server, _ = await serve(ServiceApp(f"fake-{name}", [Registration(add, fake, f"nextbest.{name}.v1.x")]))
            targets[f"{name}_target"] = f"127.0.0.1:{server.port}"
        self.app = build_decision(
            DecisionSettings(
                database_url=database_url,
                port=0,
                common=common,
                catalogue_dir=write_catalogue(tmp_path / "cat"),
                budget_web_ms=2000,
                lineage_poll_seconds=lineage_poll_seconds,
                **targets,
            )
        )
        _, decision_channel = await serve(self.app)
        self.decision = decision_grpc.DecisionServiceStub(decision_channel)
        self.repository: DecisionRepository = self.app.parts["repository"]
        self.forwarder = self.app.parts["forwarder"]
        await self.forwarder.stop()  # the tests drive the outbox themselves, one forward_once at a time
        return self

    async def customer(self, email: str) -> str:
        identifier = common_pb2.Identifier(type=EMAIL, value=email)
        reply = await self.identity.Resolve(ipb.ResolveRequest(identifiers=[identifier], create_if_missing=True))
        consent = ipb.Consent(purpose=MARKETING, channel=WEB, granted=True, source="test")
        await self.identity.SetConsent(ipb.SetConsentRequest(customer_id=reply.customer_id, consents=[consent]))
        return reply.customer_id

    async def decide(self, *, email: str = "", customer_id: str = "") -> pb.DecideResponse:
        ref = (
            common_pb2.CustomerRef(customer_id=customer_id)
            if customer_id
            else common_pb2.CustomerRef(identifiers=[common_pb2.Identifier(type=EMAIL, value=email)])
        )
        reply = await self.decision.Decide(pb.DecideRequest(channel=WEB, customer=ref), timeout=5)
        assert reply.offers and not reply.degraded, reply
        return reply

    async def record(self, outcome_id: str, decision: pb.DecideResponse, kind: int, revenue: float = 0.0) -> bool:
        request = pb.RecordOutcomeRequest(
            outcome_id=outcome_id,
            decision_id=decision.decision_id,
            offer_id=decision.offers[0].offer_id,
            type=kind,
            revenue=revenue,
        )
        return (await self.decision.RecordOutcome(request, timeout=5)).duplicate

    async def rows(self) -> tuple[dict[str, dict], dict[str, dict]]:
        async with self.repository.engine.connect() as connection:
            logged = {r.decision_id: dict(r._mapping) for r in await connection.execute(select(decisions))}
            recorded = {r.outcome_id: dict(r._mapping) for r in await connection.execute(select(outcomes))}
        return logged, recorded


@pytest.fixture
async def mesh(serve, tmp_path, database_url) -> Mesh:
    return await Mesh().start(serve, tmp_path, database_url, lineage_poll_seconds=0.05)


def naming_any(rows: dict[str, dict], *customer_ids: str) -> list[str]:
    """Ids of the rows in which any of the customer ids appears anywhere (columns and JSON alike)."""
    return [key for key, row in rows.items() if any(customer_id in repr(row) for customer_id in customer_ids)]


async def test_forget_pseudonymises_the_customer_and_the_merged_one_and_the_report_still_adds_up(mesh):
    ann, bob, cy = [await mesh.customer(f"{name}@example.com") for name in ("ann", "bob", "cy")]
    d_ann = await mesh.decide(email="ann@example.com")
    d_bob = await mesh.decide(customer_id=bob)  # the request names bob's id
    d_cy = await mesh.decide(email="cy@example.com")
    assert (d_ann.customer_id, d_bob.customer_id, d_cy.customer_id) == (ann, bob, cy)
    assert not await mesh.record("o-ann", d_ann, pb.OUTCOME_TYPE_CLICK)
    assert await mesh.forwarder.forward_once() == 1 and "outcome:o-ann" in mesh.profile.events
    assert not await mesh.record("o-bob", d_bob, pb.OUTCOME_TYPE_ACCEPT, revenue=40.0)  # left pending
    assert not await mesh.record("o-cy", d_cy, pb.OUTCOME_TYPE_IMPRESSION)
    now = utcnow()
    window = pb.GetReportRequest(
        start_time=to_timestamp(now - timedelta(hours=1)), end_time=to_timestamp(now + timedelta(hours=1))
    )
    before = await mesh.decision.GetReport(window, timeout=5)
    assert before.rows[0].customers == 3

    await mesh.identity.Merge(ipb.MergeRequest(survivor_customer_id=ann, merged_customer_id=bob, **STEWARD))
    await mesh.identity.Forget(ipb.ForgetRequest(customer_id=ann, **STEWARD))

    async def erased() -> bool:
        logged, recorded = await mesh.rows()
        return not naming_any(logged, ann, bob) and not naming_any(recorded, ann, bob)

    await until(erased)
    logged, recorded = await mesh.rows()
    ann_as, bob_as = logged[d_ann.decision_id]["customer_id"], logged[d_bob.decision_id]["customer_id"]
    assert is_pseudonym(ann_as) and is_pseudonym(bob_as) and ann_as != bob_as
    assert logged[d_bob.decision_id]["request"]["customer"]["customer_id"] == bob_as
    assert (recorded["o-ann"]["customer_id"], recorded["o-bob"]["customer_id"]) == (ann_as, bob_as)
    assert logged[d_cy.decision_id]["customer_id"] == recorded["o-cy"]["customer_id"] == cy  # not erased
    assert len(logged) == 3 and len(recorded) == 3  # nothing deleted

    after = await mesh.decision.GetReport(window, timeout=5)
    assert list(after.rows) == list(before.rows)  # totals, rates, revenue, uplift and customers: unchanged

    # The outcome pending at the erasure is settled without reaching the profile; cy's is forwarded.
    assert await mesh.forwarder.forward_once() == 2
    assert "outcome:o-bob" not in mesh.profile.events and "outcome:o-cy" in mesh.profile.events
    settled = await mesh.repository.outcome("o-bob")
    assert settled["forwarded_at"] is not None and settled["forward_note"] == ERASED_NOTE

    # An outcome on an old decision of the erased customer is still recorded, under the pseudonym, never sent.
    assert not await mesh.record("o-late", d_ann, pb.OUTCOME_TYPE_PURCHASE, revenue=25.0)
    late = await mesh.repository.outcome("o-late")
    assert (late["customer_id"], late["forward_note"]) == (ann_as, ERASED_NOTE) and late["forwarded_at"] is not None
    assert await mesh.forwarder.forward_once() == 0 and "outcome:o-late" not in mesh.profile.events
    later = await mesh.decision.GetReport(window, timeout=5)
    assert (later.rows[0].purchases, later.rows[0].customers) == (before.rows[0].purchases + 1, 3)


async def test_each_entry_is_applied_once_across_replicas_and_restarts(serve, tmp_path, database_url):
    mesh = await Mesh().start(serve, tmp_path, database_url, lineage_poll_seconds=0)  # not following
    ann, bob = await mesh.customer("ann@example.com"), await mesh.customer("bob@example.com")
    d_ann, d_bob = await mesh.decide(email="ann@example.com"), await mesh.decide(email="bob@example.com")
    await mesh.record("o-ann", d_ann, pb.OUTCOME_TYPE_CLICK)
    await mesh.identity.Merge(ipb.MergeRequest(survivor_customer_id=ann, merged_customer_id=bob, **STEWARD))
    await mesh.identity.Forget(ipb.ForgetRequest(customer_id=ann, **STEWARD))
    journal = (await mesh.identity.ListLineage(ipb.ListLineageRequest(), timeout=5)).entries
    assert [e.kind for e in journal] == [ipb.LINEAGE_KIND_MERGE, ipb.LINEAGE_KIND_FORGET]

    # Two replicas following the same database at once: each entry is applied by exactly one of them.
    engines, gateways, followers = [], [], []
    for _ in range(2):
        engine = create_engine(database_url)
        gateway = IdentityGateway(mesh.identity_target)
        gateway.open()
        engines.append(engine)
        gateways.append(gateway)
        followers.append(LineageFollower(DecisionRepository(engine), gateway, poll_seconds=3600))
    try:
        applied = await asyncio.gather(*(follower.catch_up() for follower in followers))
        assert sorted(applied) in ([0, 2], [1, 1]) and sum(applied) == 2
        assert await followers[0].catch_up() == 0 and await followers[1].catch_up() == 0
        async with engines[0].connect() as connection:
            assert await connection.scalar(select(lineage_cursor.c.seq)) == journal[-1].seq
    finally:
        for gateway in gateways:
            await gateway.close()
        for engine in engines:
            await engine.dispose()

    logged, recorded = await mesh.rows()
    assert not naming_any(logged, ann, bob) and not naming_any(recorded, ann, bob)
    ann_as = logged[d_ann.decision_id]["customer_id"]
    assert is_pseudonym(ann_as) and recorded["o-ann"]["customer_id"] == ann_as
    assert is_pseudonym(logged[d_bob.decision_id]["customer_id"]) and logged[d_bob.decision_id]["customer_id"] != ann_as

    # A restarted decision service finds the cursor at the end: nothing is applied again.
    restarted = build_decision(mesh.app.parts["settings"].model_copy(update={"lineage_poll_seconds": 0}))
    await serve(restarted)
    assert await restarted.parts["lineage"].catch_up() == 0
    assert (await mesh.rows())[0][d_ann.decision_id]["customer_id"] == ann_as
