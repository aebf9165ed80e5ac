"""Contact policies (impression caps per channel, decline cool-down, ignores) and budget caps under concurrency,
end to end on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
import uuid

import grpc
import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb
from sqlalchemy import func, select

from services.decision.storage import budgets, outcomes
from tests.integration.decision_fakes import CALL_CENTER, EMAIL, OFFERS, WEB, start_mesh, write_catalogue

pytestmark = pytest.mark.integration


def request(channel=WEB, email: str = "ann@example.com", page: str = "cart") -> pb.DecideRequest:
    return pb.DecideRequest(
        channel=channel,
        customer=common_pb2.CustomerRef(identifiers=[common_pb2.Identifier(type=EMAIL, value=email)]),
        context=pb.DecisionContext(page=page), max_offers=10,
    )


def catalogue_with(tmp_path, **changes: dict):
    offers = copy.deepcopy(OFFERS)
    for offer in offers:
        offer.update(changes.get(offer["id"].replace("-", "_"), {}))
    return write_catalogue(tmp_path / "catalogue", offers)


async def explain(mesh, decision_id: str) -> dict[str, pb.ConsideredOffer]:
    reply = await mesh.stub.Explain(pb.ExplainRequest(decision_id=decision_id), timeout=5)
    return {c.offer_id: c for c in reply.considered}


def ids(reply) -> list[str]:
    return [o.offer_id for o in reply.offers]


async def outcome(mesh, reply, offer_id: str, kind: int, revenue: float = 0.0, outcome_id: str = ""):
    return await mesh.stub.RecordOutcome(
        pb.RecordOutcomeRequest(outcome_id=outcome_id or uuid.uuid4().hex, decision_id=reply.decision_id,
                                offer_id=offer_id, type=kind, revenue=revenue), timeout=10)


async def test_daily_impression_cap_counts_per_channel(database_url, serve, tmp_path):
    folder = catalogue_with(tmp_path, free_shipping={"contact_policy": {"max_per_day": 2}})
    mesh = await start_mesh(serve, tmp_path, database_url, catalogue_dir=folder)
    first, second = [await mesh.stub.Decide(request(), timeout=5) for _ in range(2)]
    assert "free-shipping" in ids(first) and "free-shipping" in ids(second)
    third = await mesh.stub.Decide(request(), timeout=5)
    assert "free-shipping" not in ids(third)
    removed = (await explain(mesh, third.decision_id))["free-shipping"]
    assert (removed.fate, removed.removed_by) == (pb.OFFER_FATE_REMOVED, "contact_daily_cap")
    assert removed.why == "shown 2 times on web in 24 h (cap 2)"
    # The call centre has its own count.
    call = await mesh.stub.Decide(request(CALL_CENTER), timeout=5)
    assert "free-shipping" in ids(call)
    # Bob's history is his own.
    assert "free-shipping" in ids(await mesh.stub.Decide(request(email="bob@example.com"), timeout=5))


async def test_weekly_cap_and_decline_cool_down(database_url, serve, tmp_path):
    folder = catalogue_with(tmp_path, gold_perk={"contact_policy": {"decline_cooldown_days": 7}},
                            cap_cross_sell={"contact_policy": {"max_per_week": 1}})
    mesh = await start_mesh(serve, tmp_path, database_url, catalogue_dir=folder)
    first = await mesh.stub.Decide(request(), timeout=5)
    assert {"gold-perk", "cap-cross-sell"} <= set(ids(first))
    await outcome(mesh, first, "gold-perk", pb.OUTCOME_TYPE_DECLINE)
    second = await mesh.stub.Decide(request(), timeout=5)
    assert "gold-perk" not in ids(second) and "cap-cross-sell" not in ids(second)
    trace = await explain(mesh, second.decision_id)
    assert trace["gold-perk"].removed_by == "decline_cooldown" and "cool-down 7 days" in trace["gold-perk"].why
    assert trace["cap-cross-sell"].removed_by == "contact_weekly_cap"


async def test_suppression_after_ignores_but_not_after_a_response(database_url, serve, tmp_path):
    folder = catalogue_with(tmp_path, cap_cross_sell={"contact_policy": {"max_ignores": 2}})
    mesh = await start_mesh(serve, tmp_path, database_url, catalogue_dir=folder, contact_ignore_after_seconds=0.001)
    first = await mesh.stub.Decide(request(), timeout=5)
    await outcome(mesh, first, "cap-cross-sell", pb.OUTCOME_TYPE_IMPRESSION)  # seen is not a response
    second = await mesh.stub.Decide(request(), timeout=5)
    await outcome(mesh, second, "cap-cross-sell", pb.OUTCOME_TYPE_CLICK)  # a response: not ignored
    third = await mesh.stub.Decide(request(), timeout=5)
    assert "cap-cross-sell" in ids(third)  # ignored once so far (the first)
    fourth = await mesh.stub.Decide(request(), timeout=5)  # first and third ignored
    assert "cap-cross-sell" not in ids(fourth)
    removed = (await explain(mesh, fourth.decision_id))["cap-cross-sell"]
    assert (removed.removed_by, removed.why) == ("ignored_too_often", "ignored 2 times in 7 days (limit 2)")


async def test_accept_budget_is_never_exceeded_under_concurrent_outcomes_and_decisions(database_url, serve, tmp_path):
    folder = catalogue_with(tmp_path, tee_discount={"budget": {"max_accepts": 3}})
    mesh = await start_mesh(serve, tmp_path, database_url, catalogue_dir=folder)
    shown = await asyncio.gather(*(mesh.stub.Decide(request(), timeout=10) for _ in range(8)))
    assert all("tee-discount" in ids(reply) for reply in shown)

    async def accept(reply):
        try:
            await outcome(mesh, reply, "tee-discount", pb.OUTCOME_TYPE_ACCEPT, outcome_id=f"acc-{reply.decision_id}")
            return "ok"
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "budget spent" in exc.details()
            return "refused"

    # Accepts race each other and new decisions.
    results = await asyncio.gather(*(accept(r) for r in shown), *(mesh.stub.Decide(request(), timeout=10)
                                                                   for _ in range(4)))
    verdicts = results[:8]
    assert verdicts.count("ok") == 3 and verdicts.count("refused") == 5
    async with mesh.repository.engine.connect() as conn:
        stored = (await conn.execute(select(func.count()).select_from(outcomes).where(
            outcomes.c.offer_id == "tee-discount", outcomes.c.type == "accept"))).scalar_one()
        counter = (await conn.execute(select(budgets.c.accepts).where(budgets.c.offer_id == "tee-discount"))).scalar_one()
    assert stored == counter == 3

    # A retried accept is a duplicate, not a fourth accept.
    accepted = [r for r, v in zip(shown, verdicts, strict=True) if v == "ok"][0]
    again = await outcome(mesh, accepted, "tee-discount", pb.OUTCOME_TYPE_ACCEPT,
                          outcome_id=f"acc-{accepted.decision_id}")
    assert again.duplicate
    # Spent offers stop showing, also after a restart (counters read on start-up).
    after = await mesh.stub.Decide(request(), timeout=5)
    assert "tee-discount" not in ids(after)
    assert (await explain(mesh, after.decision_id))["tee-discount"].removed_by == "budget_exhausted"
    service = mesh.app.parts["service"]
    service._spent.clear()
    await service.load_budgets()
    assert "tee-discount" not in ids(await mesh.stub.Decide(request(), timeout=5))


async def test_spend_budget_counts_revenue(database_url, serve, tmp_path):
    folder = catalogue_with(tmp_path, sneaker_discount={"budget": {"max_spend": 100.0}})
    mesh = await start_mesh(serve, tmp_path, database_url, catalogue_dir=folder)
    shown = [await mesh.stub.Decide(request(), timeout=5) for _ in range(3)]
    await outcome(mesh, shown[0], "sneaker-discount", pb.OUTCOME_TYPE_ACCEPT, revenue=60.0)
    with pytest.raises(grpc.aio.AioRpcError) as over:
        await outcome(mesh, shown[1], "sneaker-discount", pb.OUTCOME_TYPE_ACCEPT, revenue=50.0)
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await outcome(mesh, shown[2], "sneaker-discount", pb.OUTCOME_TYPE_ACCEPT, revenue=40.0)  # exactly 100
    assert "sneaker-discount" not in ids(await mesh.stub.Decide(request(), timeout=5))
