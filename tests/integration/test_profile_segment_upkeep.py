"""Segment upkeep on real SQLite and PostgreSQL: model traits in expressions, the time sweep (injected clock),
definitions reloaded by a second replica, and a paged PutSegment racing ingest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from nextbest.profile.v1 import profile_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc
from sqlalchemy import select

from libs.db import create_engine
from libs.errors import FailedPrecondition
from services.profile.app import build, migrate_schema
from services.profile.domain import Event, Identifier, ProfileService
from services.profile.domain import events as ev
from services.profile.domain import service as service_module
from services.profile.storage import SqlProfileRepository, profile_segment_members, profile_segments, profile_states
from tests.integration.test_profile_service import settings_for

pytestmark = pytest.mark.integration

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class NoIdentity:
    async def resolve(self, identifiers: Sequence[Identifier]) -> str:
        raise AssertionError("every event here names its customer")


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def engine(database_url):
    engine = create_engine(database_url)
    await migrate_schema(engine)
    yield engine
    await engine.dispose()


def replica(engine, clock: Clock) -> ProfileService:
    return ProfileService(SqlProfileRepository(engine), max_batch=1000, recent_activity=3, clock=clock)


def purchase(event_id: str, customer_id: str, amount: float, at: datetime) -> Event:
    line = ev.OrderLine("SKU-1", 1, amount, amount)
    return Event(event_id, customer_id, (), at, "pos", ev.Purchase("o", (line,), 0.0, False, "pos", ""))


def prediction(event_id: str, customer_id: str, use_case: str, value: float, at: datetime) -> Event:
    return Event(event_id, customer_id, (), at, "scoring", ev.ModelPrediction(use_case, "gbm", "v1", value))


async def members(engine, segment: str) -> dict[str, datetime]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(profile_segment_members.c.customer_id, profile_segment_members.c.since).where(
                profile_segment_members.c.segment == segment
            )
        )
        return {
            customer_id: since.replace(tzinfo=UTC) if since.tzinfo is None else since for customer_id, since in rows
        }


async def collect(feed) -> AsyncIterator[list[str]]:
    async for ids in feed.watch():
        yield ids


async def test_model_traits_move_customers_in_and_out_of_segments(engine):
    clock = Clock()
    service = replica(engine, clock)
    await service.ingest([purchase("p-1", "c-1", 10.0, T0 - timedelta(hours=1))], NoIdentity())
    _, count = await service.put_segment("churny", "has(model.churn_risk) && model.churn_risk.value > 0.6", "")
    assert count == 0
    await service.ingest([prediction("m-1", "c-1", "churn_risk", 0.8, T0)], NoIdentity())
    assert set(await members(engine, "churny")) == {"c-1"}
    await service.ingest([prediction("m-2", "c-1", "lifetime_value", 900.0, T0)], NoIdentity())
    assert set(await members(engine, "churny")) == {"c-1"}
    await service.ingest([prediction("m-3", "c-1", "churn_risk", 0.1, T0 + timedelta(minutes=1))], NoIdentity())
    assert await members(engine, "churny") == {}


async def test_the_sweep_moves_time_dependent_memberships_and_publishes_them(engine):
    clock = Clock()
    service = replica(engine, clock)
    await service.ingest(
        [
            purchase("p-1", "c-1", 200.0, T0 - timedelta(hours=1)),
            purchase("p-2", "c-2", 10.0, T0 - timedelta(hours=1)),
            purchase("p-3", "c-3", 10.0, T0 - timedelta(days=20)),
        ],
        NoIdentity(),
    )
    await service.put_segment("lapsed", "days_since_last_purchase > 30", "")
    await service.put_segment("big", "total_spend >= 100.0", "")
    assert await members(engine, "lapsed") == {}
    assert await service.sweep_segments() == 0  # nothing moved with time yet

    watching = collect(service.changes)
    assert await anext(watching) == []  # subscribed
    clock.now = T0 + timedelta(days=15)  # c-3 is now 35 days past its purchase
    assert await service.sweep_segments() == 1
    assert await members(engine, "lapsed") == {"c-3": clock.now}
    assert await anext(watching) == ["c-3"]

    clock.now = T0 + timedelta(days=31)
    assert await service.sweep_segments() == 2
    assert await members(engine, "lapsed") == {"c-3": T0 + timedelta(days=15), "c-1": clock.now, "c-2": clock.now}
    assert sorted(await anext(watching)) == ["c-1", "c-2"]
    assert set(await members(engine, "big")) == {"c-1"}  # untouched by the sweep
    profile = await service.get_profile("c-3", include_features=False)
    assert profile.segments == {"lapsed": T0 + timedelta(days=15)}

    # A new purchase takes a customer out at once (a time-dependent segment is evaluated on every event too).
    await service.ingest([purchase("p-4", "c-2", 10.0, clock.now)], NoIdentity())
    assert set(await members(engine, "lapsed")) == {"c-1", "c-3"}
    await watching.aclose()


async def test_a_second_replica_reloads_definitions_put_and_deleted_elsewhere(engine):
    clock = Clock()
    first, second = replica(engine, clock), replica(engine, clock)
    await first.load_segments()
    await second.load_segments()
    assert await second.refresh_segments() is False  # nothing changed: only the version was read

    await first.put_segment("gold", 'loyalty_tier == "gold"', "")
    assert [d.name for d in second.segments.definitions()] == []
    # Before it polls, the second replica already lists the stored definition and its (empty) members.
    assert [(d.name, d.version) for d in await second.list_segments()] == [("gold", 1)]
    assert await second.list_segment_members("gold", 0, "") == ([], "")
    assert await second.refresh_segments() is True
    assert [(d.name, d.version) for d in second.segments.definitions()] == [("gold", 1)]

    gold = Event("l-1", "c-1", (), T0, "crm", ev.LoyaltyChange(0, 3))
    await second.ingest([gold], NoIdentity())  # the reloaded definition is applied by the second replica
    assert set(await members(engine, "gold")) == {"c-1"}

    await first.put_segment("gold", 'loyalty_tier == "platinum"', "")
    assert await second.refresh_segments() is True
    assert second.segments.get("gold").definition.version == 2

    await first.delete_segment("gold")
    await first.put_segment("gold", 'loyalty_tier == "gold"', "")  # deleted and put again: the count goes on
    assert await second.refresh_segments() is True
    assert second.segments.get("gold").definition.expression == 'loyalty_tier == "gold"'
    versions, current, _ = await second.segment_versions("gold")
    assert ([d.version for d in versions], current) == ([3, 2, 1], 3)
    assert versions[1].expression == 'loyalty_tier == "platinum"'

    await first.delete_segment("gold")
    # The second replica, not reloaded yet, still applies "gold": its members are removed again on reload.
    await second.ingest([Event("l-2", "c-2", (), T0, "crm", ev.LoyaltyChange(0, 3))], NoIdentity())
    assert set(await members(engine, "gold")) == {"c-2"}
    assert await second.refresh_segments() is True
    assert second.segments.definitions() == [] and await members(engine, "gold") == {}
    assert await second.list_segments() == []
    assert [d.version for d in (await second.segment_versions("gold"))[0]] == [3, 2, 1]  # the history stays
    assert (await second.get_profile("c-2", include_features=False)).segments == {}


async def test_replicas_poll_the_definitions(serve, database_url, tmp_path):
    settings = settings_for(database_url, tmp_path, "127.0.0.1:1", segment_poll_seconds=0.05)
    _, channel_a = await serve(build(settings))
    _, channel_b = await serve(build(settings))
    a, b = pb_grpc.ProfileServiceStub(channel_a), pb_grpc.ProfileServiceStub(channel_b)
    await a.PutSegment(pb.PutSegmentRequest(segment=pb.Segment(name="any", expression="order_count >= 1")), timeout=5)
    for _ in range(200):  # until B's poll has loaded it (bounded: 200 polls)
        listed = await b.ListSegments(pb.ListSegmentsRequest(), timeout=5)
        if listed.segments:
            break
        await asyncio.sleep(0.05)
    assert [segment.name for segment in listed.segments] == ["any"]


async def test_a_paged_put_racing_ingest_ends_with_every_membership_right(engine, monkeypatch):
    monkeypatch.setattr(service_module, "SEGMENT_PAGE", 3)  # many pages, so ingest interleaves with the run
    clock = Clock()
    service = replica(engine, clock)
    customers = [f"c-{i:02d}" for i in range(30)]
    await service.ingest(
        [purchase(f"a-{c}", c, 60.0 if i % 2 else 10.0, T0 - timedelta(hours=2)) for i, c in enumerate(customers)],
        NoIdentity(),
    )

    async def spend() -> None:
        for i, customer_id in enumerate(customers):
            await service.ingest(
                [purchase(f"b-{customer_id}", customer_id, 50.0, T0 - timedelta(hours=1))], NoIdentity()
            )
            if i % 3 == 0:
                await asyncio.sleep(0)

    _, (_, count) = await asyncio.gather(spend(), service.put_segment("big", "total_spend >= 100.0", ""))
    expected = {c for i, c in enumerate(customers) if i % 2}  # 60 + 50; the others have 10 + 50
    assert set(await members(engine, "big")) == expected
    for customer_id in customers:
        profile = await service.get_profile(customer_id, include_features=False)
        assert ("big" in profile.segments) == (customer_id in expected), customer_id
    assert 0 <= count <= len(customers)


async def test_a_batch_folded_with_stale_definitions_is_re_evaluated_on_reload(engine):
    clock = Clock()
    first, second = replica(engine, clock), replica(engine, clock)
    await first.load_segments()
    await second.load_segments()
    await first.ingest([purchase("p-1", "c-1", 10.0, T0 - timedelta(hours=1))], NoIdentity())
    await first.put_segment("big", "total_spend >= 100.0", "")  # its run finds c-1 below 100
    # The second replica has not polled yet: it folds a purchase that makes c-1 "big" without evaluating "big".
    await second.ingest([purchase("p-2", "c-1", 200.0, T0)], NoIdentity())
    assert await members(engine, "big") == {}
    assert await second.refresh_segments() is True
    assert set(await members(engine, "big")) == {"c-1"}
    assert set((await first.get_profile("c-1", include_features=False)).segments) == {"big"}


async def test_deleting_a_segment_removes_members_whose_profile_is_gone_without_creating_one(engine):
    service = replica(engine, Clock())
    await service.ingest([purchase("p-1", "c-1", 200.0, T0 - timedelta(hours=1))], NoIdentity())
    await service.put_segment("big", "total_spend >= 100.0", "")
    async with engine.begin() as connection:  # a member row left by a customer merged away meanwhile
        await connection.execute(profile_segment_members.insert().values(segment="big", customer_id="c-gone", since=T0))
    assert set(await members(engine, "big")) == {"c-1", "c-gone"}
    await service.delete_segment("big")
    assert await members(engine, "big") == {}
    async with engine.connect() as connection:
        states = set(await connection.scalars(select(profile_states.c.customer_id)))
    assert states == {"c-1"}


async def test_segment_history_survives_concurrent_puts_and_a_previous_release_writing_without_it(engine):
    clock = Clock()
    first, second = replica(engine, clock), replica(engine, clock)
    await first.put_segment("gold", 'loyalty_tier == "gold"', "")
    with pytest.raises(FailedPrecondition, match="segment 'gold' exists \\(version 1\\); expected none"):
        await first.put_segment("gold", "true", "", expected_version=-1)
    await first.delete_segment("gold")
    restored, _ = await first.put_segment("gold", 'loyalty_tier == "gold"', "", expected_version=-1)
    assert restored.version == 2

    # Two replicas putting the same new name at once: one wins, the other is told to retry (not ALREADY_EXISTS).
    outcomes = await asyncio.gather(
        first.put_segment("fresh", "true", "a"), second.put_segment("fresh", "false", "b"), return_exceptions=True
    )
    assert all(isinstance(o, tuple) or isinstance(o, FailedPrecondition) for o in outcomes), outcomes
    versions, current, _ = await first.segment_versions("fresh")
    assert sorted(d.version for d in versions) == list(range(1, len(versions) + 1)) and current == len(versions)

    # The release before this one (during a roll) puts without history, and resets a deleted segment to 1.
    await first.delete_segment("gold")
    async with engine.begin() as connection:
        await connection.execute(profile_segments.insert().values(
            name="gold", version=1, expression="true", description="old release", updated_at=T0))
        await connection.execute(profile_segments.insert().values(
            name="legacy", version=1, expression="true", description="", updated_at=T0))
    versions, current, _ = await first.segment_versions("legacy")  # listed, though its history is empty
    assert ([d.version for d in versions], current) == ([1], 1)
    versions, current, _ = await first.segment_versions("gold")  # the definition in force wins its version's slot
    assert [(d.version, d.description) for d in versions] == [(2, ""), (1, "old release")] and current == 1
    again, _ = await first.put_segment("gold", "false", "new release")  # past every version: no collision
    assert again.version == 3
    versions, current, _ = await first.segment_versions("gold")
    assert [(d.version, d.description) for d in versions] == [(3, "new release"), (2, ""), (1, "")] and current == 3
    await first.put_segment("legacy", "false", "")
    assert [d.version for d in (await first.segment_versions("legacy"))[0]] == [2, 1]  # v1 joined the history
