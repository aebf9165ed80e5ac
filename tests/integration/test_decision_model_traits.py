"""Model traits reach the decision through the REAL profile service (SQLite and PostgreSQL): once nightly rescoring's
`model_prediction` events are ingested, PrioritizeCall ranks the caller by predicted value and churn risk (reason
codes naming the model versions) and the retention offer's value factor shows in Explain."""

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
from nextbest.profile.v1 import profile_service_pb2 as ppb
from nextbest.profile.v1 import profile_service_pb2_grpc as ppb_grpc
from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc

from cli.explain import format_explanation
from libs.protoconv import to_timestamp, utcnow
from libs.server import Registration, ServiceApp
from libs.settings import CommonSettings
from services.decision.app import build as build_decision
from services.decision.settings import DecisionSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.profile.app import build as build_profile
from services.profile.settings import ProfileSettings
from tests.integration.decision_fakes import EMAIL, FakeInventory, FakeScoring, write_catalogue

pytestmark = pytest.mark.integration


@pytest.fixture
async def mesh(serve, tmp_path, database_url):
    """(decision stub, profile stub, customer id): real identity, profile and decision; fake scoring and inventory."""
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
    targets = {"identity_target": identity_target, "profile_target": f"127.0.0.1:{profile_server.port}"}
    for name, fake, add in (
        ("scoring", FakeScoring(), scoring_grpc.add_ScoringServiceServicer_to_server),
        ("inventory", FakeInventory(), inventory_grpc.add_InventoryServiceServicer_to_server),
    ):
        server, _ = await serve(ServiceApp(f"fake-{name}", [Registration(add, fake, f"nextbest.{name}.v1.x")]))
        targets[f"{name}_target"] = f"127.0.0.1:{server.port}"
    _, decision_channel = await serve(
        build_decision(
            DecisionSettings(
                database_url=database_url,
                port=0,
                common=common,
                catalogue_dir=write_catalogue(tmp_path / "cat"),
                budget_call_center_ms=2000,
                **targets,
            )
        )
    )
    identity = ipb_grpc.IdentityServiceStub(identity_channel)
    ann = common_pb2.Identifier(type=EMAIL, value="ann@example.com")
    customer_id = (
        await identity.Resolve(ipb.ResolveRequest(identifiers=[ann], create_if_missing=True), timeout=5)
    ).customer_id
    profile = ppb_grpc.ProfileServiceStub(profile_channel)
    now = utcnow()
    purchases = [
        ppb.Event(
            event_id=f"buy-{n}",
            customer_id=customer_id,
            source="test",
            occurred_at=to_timestamp(now - timedelta(days=30 * (n + 1))),
            purchase=ppb.Purchase(
                order_id=f"o-{n}", lines=[ppb.OrderLine(sku="TEE-M-WHT", quantity=1, unit_price=100.0)]
            ),
        )
        for n in range(3)
    ]
    assert (await profile.IngestEvents(ppb.IngestEventsRequest(events=purchases), timeout=10)).accepted == 3
    return decision_grpc.DecisionServiceStub(decision_channel), profile, customer_id


def prediction(customer_id: str, use_case: str, version: str, value: float) -> ppb.Event:
    """What `nextbest model rescore` writes back (services/scoring/rescore.py)."""
    return ppb.Event(
        event_id=f"model:{use_case}:{version}:{customer_id}",
        customer_id=customer_id,
        source="rescore",
        occurred_at=to_timestamp(utcnow()),
        model_prediction=ppb.ModelPrediction(
            use_case=use_case, model_name=f"{use_case}-xgb", model_version=version, value=value
        ),
    )


async def test_model_traits_ingested_through_the_profile_change_the_call_priority_and_the_value_factor(mesh):
    decision, profile, customer_id = mesh
    request = pb.PrioritizeCallRequest(
        customer=common_pb2.CustomerRef(customer_id=customer_id), call_reason="order_status"
    )
    before = await decision.PrioritizeCall(request, timeout=5)
    # No model traits yet: today's rules. Base 15 + net value 300 (10 x log10(31) = 14.9) + 3 orders = 32.9.
    assert (before.priority, list(before.reasons), before.degraded) == (33, [], False)

    events = [
        prediction(customer_id, "churn_risk", "churn-v1", 0.9),
        prediction(customer_id, "lifetime_value", "ltv-v1", 1500.0),
    ]
    assert (await profile.IngestEvents(ppb.IngestEventsRequest(events=events), timeout=10)).accepted == 2

    # The decision's profile cache drops the customer when the profile's change feed reports the ingest.
    for _ in range(100):
        after = await decision.PrioritizeCall(request, timeout=5)
        if after.reasons:
            break
        await asyncio.sleep(0.05)
    # Base 15 + predicted value 1,500 (25, instead of net value's 14.9) + 3 orders + churn 20 x 0.9 = 61.
    assert after.priority == 61 and after.tier == pb.CALL_TIER_PRIORITY
    assert list(after.reasons) == ["high_predicted_value:ltv-v1", "churn_risk_model:churn-v1"]
    assert not after.degraded

    # The agent's retention action (a service action) is worth twice as much for this customer: the factor's cap.
    action = after.next_best_action
    assert action.offer_id == "callback" and "predicted_ltv:ltv-v1" in action.reason_codes
    explained = await decision.Explain(pb.ExplainRequest(decision_id=after.decision_id), timeout=5)
    callback = next(c for c in explained.considered if c.offer_id == "callback")
    assert (callback.value_factor, callback.value_factor_source) == (2.0, "predicted_ltv:ltv-v1")
    assert callback.score == pytest.approx(
        callback.propensity * callback.value * 2.0 * callback.lever * callback.context_weight
    )
    assert "x value factor 2 [predicted_ltv:ltv-v1] x lever" in format_explanation(explained)
    earlier = await decision.Explain(pb.ExplainRequest(decision_id=before.decision_id), timeout=5)
    assert [(c.value_factor, c.value_factor_source) for c in earlier.considered if c.offer_id == "callback"] == [
        (1.0, "")
    ]
