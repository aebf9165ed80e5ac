"""PrioritizeCall end to end: queue priority and tier, the agent's next-best action, degradation, bad input."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb

from tests.integration.decision_fakes import EMAIL, start_mesh

pytestmark = pytest.mark.integration


def call(reason: str = "order_status", *, customer_id: str = "", email: str = "") -> pb.PrioritizeCallRequest:
    identifiers = [common_pb2.Identifier(type=EMAIL, value=email)] if email else []
    return pb.PrioritizeCallRequest(
        customer=common_pb2.CustomerRef(customer_id=customer_id, identifiers=identifiers), call_reason=reason
    )


async def test_a_loyal_high_value_gold_customer_is_ahead_of_a_new_one(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    loyal = await mesh.stub.PrioritizeCall(call(email="ann@example.com"), timeout=5)
    new = await mesh.stub.PrioritizeCall(call(email="bob@example.com"), timeout=5)

    assert (loyal.customer_id, new.customer_id) == ("c-ann", "c-bob")
    assert loyal.priority > new.priority
    assert (loyal.tier, new.tier) == (pb.CALL_TIER_PRIORITY, pb.CALL_TIER_STANDARD)
    assert list(loyal.reasons) == ["high_value", "gold_tier", "frequent_buyer"]
    assert list(new.reasons) == ["new_or_unknown_caller"]
    assert not loyal.degraded and not new.degraded

    # The agent's action comes from the same pipeline, call-centre offers only, with a script.
    assert loyal.next_best_action.offer_id == "gold-perk" and loyal.next_best_action.rank == 1
    assert loyal.next_best_action.script.startswith("Thank them for their loyalty")
    assert new.next_best_action.offer_id == "free-shipping"  # no gold perk for a new customer

    row = await mesh.repository.decision(loyal.decision_id)
    assert row["channel"] == "call_center" and row["customer_id"] == "c-ann"
    assert row["request"]["rpc"] == "PrioritizeCall"
    assert row["request"]["priority"] == {"priority": loyal.priority, "tier": "priority",
                                          "reasons": ["high_value", "gold_tier", "frequent_buyer"]}
    assert [o["offer_id"] for o in row["offers"]] == ["gold-perk"]


async def test_churn_risk_call_reason_raises_priority_to_vip(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    calm = await mesh.stub.PrioritizeCall(call("order_status", customer_id="c-ann"), timeout=5)
    leaving = await mesh.stub.PrioritizeCall(call("cancel", customer_id="c-ann"), timeout=5)
    assert leaving.priority == calm.priority + 15
    assert leaving.tier == pb.CALL_TIER_VIP and "churn_risk_call_reason" in leaving.reasons


async def test_an_unknown_caller_gets_a_low_priority_and_a_service_action(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    reply = await mesh.stub.PrioritizeCall(call(email="nobody@example.com"), timeout=5)
    assert reply.customer_id == "" and reply.tier == pb.CALL_TIER_STANDARD
    assert list(reply.reasons) == ["new_or_unknown_caller"] and reply.priority == 10
    # No consent is known for a stranger: only a non-marketing service action may be proposed.
    assert reply.next_best_action.offer_id == "callback"
    assert reply.next_best_action.type == pb.OFFER_TYPE_SERVICE_ACTION


async def test_a_slow_profile_degrades_within_the_call_centre_budget(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url, budget_call_center_ms=150)
    await mesh.stub.PrioritizeCall(call(customer_id="c-ann"), timeout=5)  # warm connections
    mesh.profile.get.delay = 5.0
    started = time.monotonic()
    reply = await asyncio.wait_for(mesh.stub.PrioritizeCall(call(customer_id="c-ann")), 5)  # no client deadline
    assert time.monotonic() - started < 0.4
    assert reply.degraded and list(reply.degraded_reasons) == ["profile_unavailable"]
    assert reply.customer_id == "c-ann" and 0 <= reply.priority <= 100
    assert reply.next_best_action.offer_id  # consent is known: the pipeline still proposes an action


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.PrioritizeCallRequest(call_reason="complaint"), "customer"),
        (call(email="not-an-email"), "customer.identifiers[0].value"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(database_url, serve, tmp_path, request_, field):
    mesh = await start_mesh(serve, tmp_path, database_url)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await mesh.stub.PrioritizeCall(request_, timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}: ")
