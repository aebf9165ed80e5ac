"""RecordOutcome end to end: idempotency, bad input, and the outbox that forwards outcomes to the profile."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2 as profile_pb
from sqlalchemy import func, select

from libs.protoconv import to_timestamp
from services.decision.storage import outcomes
from tests.integration.decision_fakes import EMAIL, WEB, start_mesh, write_catalogue
from tests.integration.polling import until

pytestmark = pytest.mark.integration


async def decide(mesh, email: str = "ann@example.com") -> pb.DecideResponse:
    request = pb.DecideRequest(
        channel=WEB, customer=common_pb2.CustomerRef(identifiers=[common_pb2.Identifier(type=EMAIL, value=email)])
    )
    return await mesh.stub.Decide(request, timeout=5)


async def outcome_count(mesh) -> int:
    async with mesh.repository.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(outcomes))).scalar_one()


async def forwarded(mesh, *outcome_ids: str) -> bool:
    rows = [await mesh.repository.outcome(oid) for oid in outcome_ids]
    return all(row["forwarded_at"] is not None for row in rows)


async def test_outcome_is_recorded_once_and_forwarded_to_the_profile(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    decision = await decide(mesh)
    offer_id = decision.offers[0].offer_id
    occurred = datetime(2025, 3, 1, 10, 30, tzinfo=UTC)
    request = pb.RecordOutcomeRequest(
        outcome_id="o-1", decision_id=decision.decision_id, offer_id=offer_id, type=pb.OUTCOME_TYPE_PURCHASE,
        occurred_at=to_timestamp(occurred), revenue=84.5,
    )
    first = await mesh.stub.RecordOutcome(request, timeout=5)
    again = await mesh.stub.RecordOutcome(request, timeout=5)
    changed = await mesh.stub.RecordOutcome(
        pb.RecordOutcomeRequest(outcome_id="o-1", decision_id=decision.decision_id, offer_id=offer_id,
                                type=pb.OUTCOME_TYPE_DECLINE), timeout=5)
    assert (first.duplicate, again.duplicate, changed.duplicate) == (False, True, True)

    row = await mesh.repository.outcome("o-1")
    assert (row["decision_id"], row["offer_id"], row["type"], row["revenue"], row["customer_id"]) == (
        decision.decision_id, offer_id, "purchase", 84.5, "c-ann")  # the duplicate changed nothing
    assert row["occurred_at"].replace(tzinfo=UTC) == occurred

    await until(lambda: "outcome:o-1" in mesh.profile.events)
    event = mesh.profile.events["outcome:o-1"]
    assert event.customer_id == "c-ann" and event.source == "decision"
    assert event.occurred_at.ToDatetime(tzinfo=UTC) == occurred
    assert (event.offer_response.decision_id, event.offer_response.offer_id, event.offer_response.response) == (
        decision.decision_id, offer_id, profile_pb.OFFER_RESPONSE_TYPE_PURCHASE)
    await until(lambda: forwarded(mesh, "o-1"))  # marked right after the send
    assert len(mesh.profile.events) == 1


async def test_occurred_at_defaults_to_now(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    decision = await decide(mesh)
    before = datetime.now(UTC)
    await mesh.stub.RecordOutcome(pb.RecordOutcomeRequest(
        outcome_id="o-now", decision_id=decision.decision_id, offer_id=decision.offers[0].offer_id,
        type=pb.OUTCOME_TYPE_CLICK), timeout=5)
    occurred = (await mesh.repository.outcome("o-now"))["occurred_at"].replace(tzinfo=UTC)
    assert before <= occurred <= datetime.now(UTC)


async def test_concurrent_duplicates_record_exactly_one(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    decision = await decide(mesh)
    request = pb.RecordOutcomeRequest(outcome_id="o-race", decision_id=decision.decision_id,
                                      offer_id=decision.offers[0].offer_id, type=pb.OUTCOME_TYPE_ACCEPT)
    replies = await asyncio.gather(*(mesh.stub.RecordOutcome(request, timeout=10) for _ in range(8)))
    assert sorted(r.duplicate for r in replies) == [False] + [True] * 7
    assert await outcome_count(mesh) == 1


async def test_failed_forwarding_is_retried_and_applied_once(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url, outbox_interval_seconds=0.05)
    mesh.profile.ingest.fail = grpc.StatusCode.UNAVAILABLE
    decision = await decide(mesh)
    for n in range(3):
        await mesh.stub.RecordOutcome(pb.RecordOutcomeRequest(
            outcome_id=f"o-{n}", decision_id=decision.decision_id, offer_id=decision.offers[0].offer_id,
            type=pb.OUTCOME_TYPE_IMPRESSION), timeout=5)
    await until(lambda: mesh.profile.ingest_calls >= 2)  # tried, failed, tried again
    assert mesh.profile.events == {}
    assert not await forwarded(mesh, "o-0") and not await forwarded(mesh, "o-2")

    mesh.profile.ingest.fail = None
    await until(lambda: len(mesh.profile.events) == 3)
    await until(lambda: forwarded(mesh, "o-0", "o-1", "o-2"))
    notes = [(await mesh.repository.outcome(f"o-{n}"))["forward_note"] for n in range(3)]
    assert notes == [None, None, None]
    calls = mesh.profile.ingest_calls
    await asyncio.sleep(0.2)
    assert mesh.profile.ingest_calls == calls  # nothing pending: nothing resent
    assert set(mesh.profile.events) == {"outcome:o-0", "outcome:o-1", "outcome:o-2"}


async def test_a_resend_after_a_lost_reply_is_deduplicated_by_the_profile(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    forwarder = mesh.app.parts["forwarder"]
    await forwarder.stop()  # drive the outbox by hand
    decision = await decide(mesh)
    await mesh.stub.RecordOutcome(pb.RecordOutcomeRequest(
        outcome_id="o-lost", decision_id=decision.decision_id, offer_id=decision.offers[0].offer_id,
        type=pb.OUTCOME_TYPE_ACCEPT), timeout=5)
    pending = await mesh.repository.pending_outcomes(10)
    await mesh.app.parts["gateways"].profile.ingest_outcomes(pending, 5)  # sent, but "the reply was lost"
    assert await forwarder.forward_once() == 1  # so it is sent again
    assert await forwarder.forward_once() == 0
    assert len(mesh.profile.events) == 1 and mesh.profile.ingest_calls == 2


async def test_anonymous_outcomes_are_recorded_but_not_forwarded(database_url, serve, tmp_path):
    offers = [{"id": "open-day", "name": "Store open day", "type": "service_action", "channels": ["web"],
               "value": 1.0, "base_propensity": 0.5}]
    mesh = await start_mesh(serve, tmp_path, database_url, catalogue_dir=write_catalogue(tmp_path / "c", offers))
    decision = await decide(mesh, "nobody@example.com")
    assert decision.customer_id == "" and decision.offers[0].offer_id == "open-day"
    reply = await mesh.stub.RecordOutcome(pb.RecordOutcomeRequest(
        outcome_id="o-anon", decision_id=decision.decision_id, offer_id="open-day", type=pb.OUTCOME_TYPE_CLICK),
        timeout=5)
    assert not reply.duplicate
    row = await mesh.repository.outcome("o-anon")
    assert row["forwarded_at"] is not None and row["forward_note"].startswith("anonymous")
    assert await mesh.repository.pending_outcomes(10) == []


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"outcome_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "outcome_id"),
        ({"decision_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "decision_id"),
        ({"offer_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "offer_id"),
        ({"type": pb.OUTCOME_TYPE_UNSPECIFIED}, grpc.StatusCode.INVALID_ARGUMENT, "type"),
        ({"revenue": -5.0}, grpc.StatusCode.INVALID_ARGUMENT, "revenue"),
        ({"offer_id": "not-returned"}, grpc.StatusCode.INVALID_ARGUMENT, "offer_id"),
        ({"decision_id": "0" * 32}, grpc.StatusCode.NOT_FOUND, "decision"),
    ],
)
async def test_bad_outcomes_are_rejected_and_nothing_is_written(database_url, serve, tmp_path, changes, code, field):
    mesh = await start_mesh(serve, tmp_path, database_url)
    decision = await decide(mesh)
    fields = {"outcome_id": "o-bad", "decision_id": decision.decision_id, "offer_id": decision.offers[0].offer_id,
              "type": pb.OUTCOME_TYPE_ACCEPT, **changes}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await mesh.stub.RecordOutcome(pb.RecordOutcomeRequest(**fields), timeout=5)
    assert error.value.code() == code
    assert error.value.details().startswith(field)
    assert await outcome_count(mesh) == 0


async def test_stopping_the_service_stops_the_outbox(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    forwarder = mesh.app.parts["forwarder"]
    assert forwarder.running
    await mesh.app.on_stop()
    assert not forwarder.running


async def test_concurrent_decisions_are_each_persisted_by_group_commit(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    replies = await asyncio.gather(*(decide(mesh) for _ in range(25)))
    assert len({reply.decision_id for reply in replies}) == 25
    # Every answered decision is already in the log (durable before the answer left).
    for reply in replies:
        stored = await mesh.repository.decision(reply.decision_id)
        assert stored is not None and stored["customer_id"] == reply.customer_id
