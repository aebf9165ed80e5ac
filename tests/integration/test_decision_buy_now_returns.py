"""Buy-now for loyal customers on a scarce item, and no offers of a returned category, with the real identity,
profile and inventory services (scoring is a fake: no model needed), on real SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb
from nextbest.decision.v1 import decision_service_pb2_grpc as decision_grpc
from nextbest.identity.v1 import identity_service_pb2 as ipb
from nextbest.identity.v1 import identity_service_pb2_grpc as ipb_grpc
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
from services.inventory.app import build as build_inventory
from services.inventory.importer import import_stock_csv
from services.inventory.settings import InventorySettings
from services.profile.app import build as build_profile
from services.profile.settings import ProfileSettings
from tests.integration.decision_fakes import CALL_CENTER, EMAIL, MARKETING, WEB, FakeScoring, write_catalogue

pytestmark = pytest.mark.integration

#: The Trail Boot has 2 units in the warehouse: scarce (below 3); only gold/platinum or the top 10% by value keep it.
BOOT_DROP = {
    "id": "boot-drop",
    "name": "Trail Boot drop",
    "type": "discount",
    "channels": ["web", "call_center"],
    "value": 40.0,
    "base_propensity": 0.3,
    "product_id": "P-BOOT",
    "scarcity": {"below_units": 3, "min_value_percentile": 90, "value_percentiles": {"50": 400, "90": 5000}},
}
CAP = {
    "id": "cap-cross-sell",
    "name": "Add the Logo Cap",
    "type": "cross_sell",
    "channels": ["web", "call_center"],
    "value": 3.0,
    "base_propensity": 0.2,
    "product_id": "P-CAP",
}
STOCK_CSV = """sku,product_id,size,colour,location_id,location_kind,on_hand
BOOT-42-BRN,P-BOOT,42,brown,DC1,warehouse,2
CAP-OS-RED,P-CAP,OS,red,DC1,warehouse,10
"""


class Mesh:
    """Real identity, profile, inventory and decision; a fake scoring service."""

    async def start(self, serve, tmp_path, database_url: str) -> Mesh:
        common = CommonSettings(data_dir=tmp_path)
        identity_server, identity_channel = await serve(
            build_identity(IdentitySettings(database_url=database_url, port=0, common=common))
        )
        identity_target = f"127.0.0.1:{identity_server.port}"
        profile_server, profile_channel = await serve(
            build_profile(
                ProfileSettings(database_url=database_url, port=0, identity_target=identity_target, common=common)
            )
        )
        (tmp_path / "stock.csv").write_text(STOCK_CSV)
        inventory_settings = InventorySettings(database_url=database_url, port=0, common=common)
        await import_stock_csv(inventory_settings, tmp_path / "stock.csv")
        inventory_server, _ = await serve(build_inventory(inventory_settings))
        scoring_server, _ = await serve(
            ServiceApp(
                "fake-scoring",
                [
                    Registration(
                        scoring_grpc.add_ScoringServiceServicer_to_server, FakeScoring(), "nextbest.scoring.v1.x"
                    )
                ],
            )
        )
        self.identity = ipb_grpc.IdentityServiceStub(identity_channel)
        self.profile = ppb_grpc.ProfileServiceStub(profile_channel)
        _, decision_channel = await serve(
            build_decision(
                DecisionSettings(
                    database_url=database_url,
                    port=0,
                    common=common,
                    budget_web_ms=3000,
                    budget_call_center_ms=3000,
                    catalogue_dir=write_catalogue(tmp_path / "cat", [BOOT_DROP, CAP]),
                    identity_target=identity_target,
                    profile_target=f"127.0.0.1:{profile_server.port}",
                    inventory_target=f"127.0.0.1:{inventory_server.port}",
                    scoring_target=f"127.0.0.1:{scoring_server.port}",
                )
            )
        )
        self.decision = decision_grpc.DecisionServiceStub(decision_channel)
        return self

    async def customer(self, email: str, *events: dict) -> str:
        """A customer with marketing consent on the web and by phone, and these profile events."""
        ident = common_pb2.Identifier(type=EMAIL, value=email)
        reply = await self.identity.Resolve(ipb.ResolveRequest(identifiers=[ident], create_if_missing=True), timeout=5)
        consents = [ipb.Consent(purpose=MARKETING, channel=c, granted=True, source="test") for c in (WEB, CALL_CENTER)]
        await self.identity.SetConsent(
            ipb.SetConsentRequest(customer_id=reply.customer_id, consents=consents), timeout=5
        )
        batch = [
            ppb.Event(
                event_id=f"{email}-{i}",
                customer_id=reply.customer_id,
                occurred_at=to_timestamp(utcnow()),
                source="test",
                **payload,
            )
            for i, payload in enumerate(events)
        ]
        ingested = await self.profile.IngestEvents(ppb.IngestEventsRequest(events=batch), timeout=5)
        assert ingested.accepted == len(batch)
        return reply.customer_id

    async def decide(self, customer_id: str) -> pb.DecideResponse:
        request = pb.DecideRequest(channel=WEB, customer=common_pb2.CustomerRef(customer_id=customer_id), max_offers=5)
        return await self.decision.Decide(request, timeout=5)

    async def explained(self, decision_id: str, offer_id: str) -> pb.ConsideredOffer:
        reply = await self.decision.Explain(pb.ExplainRequest(decision_id=decision_id), timeout=5)
        return next(c for c in reply.considered if c.offer_id == offer_id)


def tier(value: int) -> dict:
    return {"loyalty_change": ppb.LoyaltyChange(points_delta=100, tier=value)}


@pytest.fixture
async def mesh(serve, tmp_path, database_url) -> Mesh:
    return await Mesh().start(serve, tmp_path, database_url)


async def test_a_gold_customer_gets_buy_now_on_the_scarce_item_and_a_bronze_one_does_not(mesh):
    gold = await mesh.customer("ann@example.com", tier(ppb.LOYALTY_TIER_GOLD))
    bronze = await mesh.customer("bob@example.com", tier(ppb.LOYALTY_TIER_BRONZE))

    ann = await mesh.decide(gold)
    boot = next(o for o in ann.offers if o.offer_id == "boot-drop")
    assert boot.prefill.action == pb.CART_ACTION_BUY_NOW
    assert (boot.prefill.sku, boot.prefill.quantity, boot.prefill.units_left) == ("BOOT-42-BRN", 1, 2)
    assert boot.prefill.hold.seconds == 900
    assert boot.headline == "Only 2 left — reserved for gold members: buy now."
    assert "buy_now" in boot.reason_codes
    cap = next(o for o in ann.offers if o.offer_id == "cap-cross-sell")
    assert cap.prefill.action == pb.CART_ACTION_ADD_TO_CART and cap.headline == ""
    entry = await mesh.explained(ann.decision_id, "boot-drop")
    assert entry.fate == pb.OFFER_FATE_RANKED
    assert entry.why == "buy now (scarce_loyal): 2 unit(s) left at DC1 (scarce below 3); gold tier goes first"

    bob = await mesh.decide(bronze)
    assert [o.offer_id for o in bob.offers] == ["cap-cross-sell"]
    assert all(o.prefill.action != pb.CART_ACTION_BUY_NOW for o in bob.offers)
    assert (await mesh.explained(bob.decision_id, "boot-drop")).removed_by == "scarce_low_value"

    call = await mesh.decision.PrioritizeCall(
        pb.PrioritizeCallRequest(customer=common_pb2.CustomerRef(customer_id=gold), call_reason="scarce_item"),
        timeout=5,
    )
    assert call.next_best_action.offer_id == "boot-drop"
    assert call.next_best_action.script.startswith(
        "Offer this first: Trail Boot drop — only 2 left, kept for gold members; they can buy it now on this call."
    )


async def test_a_returned_category_is_not_offered_and_the_agent_is_told(mesh):
    returned_cap = ppb.ProductReturn(
        order_id="o-1",
        lines=[ppb.ReturnLine(sku="CAP-OS-RED", quantity=1, refund_amount=20.0)],
        method=ppb.RETURN_METHOD_MAIL,
        reason="colour",
    )
    carol = await mesh.customer("carol@example.com", tier(ppb.LOYALTY_TIER_GOLD), {"product_return": returned_cap})
    today = f"{utcnow():%Y-%m-%d}"

    profile = await mesh.profile.GetProfile(ppb.GetProfileRequest(customer_id=carol), timeout=5)
    [item] = profile.profile.traits.recently_returned
    assert (item.sku, item.category) == ("CAP-OS-RED", "")  # no category on the return: the decision looks it up

    reply = await mesh.decide(carol)
    assert [o.offer_id for o in reply.offers] == ["boot-drop"]
    entry = await mesh.explained(reply.decision_id, "cap-cross-sell")
    assert (entry.fate, entry.removed_by) == (pb.OFFER_FATE_REMOVED, "recently_returned")
    assert entry.why == f"returned Logo Cap (CAP-OS-RED) on {today}, within 30 days"

    call = await mesh.decision.PrioritizeCall(
        pb.PrioritizeCallRequest(customer=common_pb2.CustomerRef(customer_id=carol), call_reason="order_status"),
        timeout=5,
    )
    assert f"Do not offer accessories: returned on {today}." in call.avoid
    assert call.next_best_action.offer_id == "boot-drop"
