"""Identity merges, unmerges and erasures reflected in the profile, over gRPC with real identity and profile servers
on real SQLite and PostgreSQL: combined traits after a merge, an exact split after an unmerge, late events of a
merged id, erasure of everything attributed to a forgotten customer, and exactly-once application of the lineage
journal across restarts and concurrent followers."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from nextbest.common.v1 import common_pb2 as common
from nextbest.identity.v1 import identity_service_pb2 as ipb
from nextbest.identity.v1 import identity_service_pb2_grpc as ipb_grpc
from nextbest.profile.v1 import profile_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc
from sqlalchemy import func, select

from libs.clients import open_channel
from libs.db import create_engine
from libs.protoconv import to_duration, to_timestamp, utcnow
from libs.server import GrpcServer
from libs.settings import CommonSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.profile.app import build, migrate_schema
from services.profile.domain.lineage import LineageFollower, fold
from services.profile.domain.segments import SegmentRegistry
from services.profile.resolver import IdentityClient
from services.profile.settings import ProfileSettings
from services.profile.storage import (
    SqlProfileRepository,
    profile_aliases,
    profile_events,
    profile_lineage_cursor,
    profile_segment_members,
    profile_states,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
EMAIL = common.IDENTIFIER_TYPE_EMAIL
STEWARD = {"reason": "same person, confirmed by phone", "actor": "steward-3"}


def purchase(event_id: str, customer_id: str, amount: float, days_ago: float) -> pb.Event:
    return pb.Event(
        event_id=event_id,
        customer_id=customer_id,
        occurred_at=to_timestamp(NOW - timedelta(days=days_ago)),
        source="test",
        purchase=pb.Purchase(
            order_id=event_id,
            lines=[pb.OrderLine(sku=f"SKU-{event_id}", quantity=1, unit_price=amount, list_price=amount)],
            channel=common.CHANNEL_WEB,
        ),
    )


def view(event_id: str, customer_id: str, sku: str, hours_ago: float) -> pb.Event:
    return pb.Event(
        event_id=event_id,
        customer_id=customer_id,
        occurred_at=to_timestamp(NOW - timedelta(hours=hours_ago)),
        source="test",
        product_view=pb.ProductView(sku=sku, dwell=to_duration(timedelta(seconds=30))),
    )


@pytest.fixture
async def identity(serve, database_url, tmp_path):
    """A real identity service in this process (its own tables in the test database): stub, target."""
    settings = IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path))
    server, channel = await serve(build_identity(settings))
    return ipb_grpc.IdentityServiceStub(channel), f"127.0.0.1:{server.port}"


def profile_settings(database_url, tmp_path, identity_target: str, poll: float = 0.05) -> ProfileSettings:
    return ProfileSettings(
        database_url=database_url,
        port=0,
        identity_target=identity_target,
        lineage_poll_seconds=poll,
        common=CommonSettings(data_dir=tmp_path),
    )


@pytest.fixture
async def profile(serve, database_url, tmp_path, identity):
    app = build(profile_settings(database_url, tmp_path, identity[1]))
    _, channel = await serve(app)
    return pb_grpc.ProfileServiceStub(channel), app


async def customer(identity_stub, email: str) -> str:
    request = ipb.ResolveRequest(identifiers=[common.Identifier(type=EMAIL, value=email)], create_if_missing=True)
    return (await identity_stub.Resolve(request, timeout=5)).customer_id


async def ingest(stub, *events: pb.Event) -> None:
    answer = await stub.IngestEvents(pb.IngestEventsRequest(events=events), timeout=10)
    assert (answer.accepted, list(answer.rejected)) == (len(events), [])


async def get_profile(stub, customer_id: str) -> pb.Profile:
    return (await stub.GetProfile(pb.GetProfileRequest(customer_id=customer_id), timeout=5)).profile


def comparable(traits: pb.Traits) -> pb.Traits:
    copy = pb.Traits()
    copy.CopyFrom(traits)
    for moving in ("purchase_intent", "purchase_frequency"):
        copy.ClearField(moving)  # move with the clock, not with the data
    return copy


async def eventually(check, timeout: float = 10.0):
    """Poll `check` (an async function returning a truthy value when done) until it is or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "the profile did not reflect the identity change in time"
        await asyncio.sleep(0.02)


async def count(engine, table, *where) -> int:
    async with engine.connect() as connection:
        return await connection.scalar(select(func.count()).select_from(table).where(*where))


async def test_merge_combines_and_unmerge_splits_back_exactly(identity, profile):
    identity_stub, _ = identity
    stub, app = profile
    engine = app.parts["engine"]
    a, b = await customer(identity_stub, "ann@example.com"), await customer(identity_stub, "ann.b@example.com")
    await stub.PutSegment(
        pb.PutSegmentRequest(segment=pb.Segment(name="big", expression="total_spend > 150.0", description="")),
        timeout=10,
    )
    await ingest(stub, purchase("a-1", a, 100.0, 40), purchase("a-2", a, 30.0, 5), view("a-v", a, "SKU-A", 3))
    await ingest(stub, purchase("b-1", b, 50.0, 20), view("b-v", b, "SKU-B", 1))
    before_a, before_b = await get_profile(stub, a), await get_profile(stub, b)
    assert [s.segment for s in before_a.segments] == [] and before_a.traits.order_count == 2

    merge = await identity_stub.Merge(
        ipb.MergeRequest(survivor_customer_id=a, merged_customer_id=b, **STEWARD), timeout=5
    )

    async def merged():
        got = await get_profile(stub, a)
        return got if got.traits.order_count == 3 else None

    combined = await merged() or await eventually(merged)
    assert combined.traits.total_spend == pytest.approx(180.0)
    assert [v.sku for v in combined.traits.last_viewed] == ["SKU-B", "SKU-A"]  # newest first, across both
    assert [s.segment for s in combined.segments] == ["big"]  # 180 > 150: only together
    assert {a.event_id for a in combined.recent_activity} == {"a-1", "a-2", "a-v", "b-1", "b-v"}
    # B is no longer a profile of its own: reading it answers with the survivor's.
    assert (await get_profile(stub, b)).customer_id == a
    features = await stub.GetFeatures(pb.GetFeaturesRequest(customer_id=b, names=["order_count"]), timeout=5)
    assert list(features.values) == [3.0]
    # Events keep their original customer id (what lets an unmerge split them back); B's state is gone.
    assert await count(engine, profile_events, profile_events.c.customer_id == b) == 2
    assert await count(engine, profile_states, profile_states.c.customer_id == b) == 0

    # A late event still carrying B while merged: stored under B, folded into A.
    await ingest(stub, purchase("b-late", b, 20.0, 0.5))
    assert (await get_profile(stub, a)).traits.order_count == 4
    assert await count(engine, profile_events, profile_events.c.customer_id == b) == 3

    await identity_stub.Unmerge(ipb.UnmergeRequest(merge_id=merge.merge_id, **STEWARD), timeout=5)

    async def split():
        got = await get_profile(stub, b)
        return got if got.customer_id == b else None

    after_b = await eventually(split)
    after_a = await get_profile(stub, a)
    assert comparable(after_a.traits) == comparable(before_a.traits)
    assert after_a.first_seen_at == before_a.first_seen_at
    assert [s.segment for s in after_a.segments] == []  # 130 alone: left "big" again
    assert (after_b.traits.order_count, after_b.traits.total_spend) == (2, 70.0)  # its own, plus the late one
    assert after_b.traits.last_viewed == before_b.traits.last_viewed
    assert await count(engine, profile_segment_members) == 0
    assert await count(engine, profile_aliases) == 0


async def test_forget_erases_the_customer_and_everything_merged_into_it(identity, profile):
    identity_stub, _ = identity
    stub, app = profile
    engine = app.parts["engine"]
    a, b, other = [await customer(identity_stub, f"{name}@example.com") for name in ("ida", "ida2", "otto")]
    await stub.PutSegment(
        pb.PutSegmentRequest(segment=pb.Segment(name="buyers", expression="order_count > 0", description="")),
        timeout=10,
    )
    await ingest(stub, purchase("a-1", a, 10.0, 3), purchase("b-1", b, 20.0, 2), purchase("o-1", other, 5.0, 1))
    await identity_stub.Merge(ipb.MergeRequest(survivor_customer_id=a, merged_customer_id=b, **STEWARD), timeout=5)
    await eventually(lambda: _has_orders(stub, a, 2))

    changes = app.parts["service"].changes.watch()
    assert await anext(changes) == []
    await identity_stub.Forget(ipb.ForgetRequest(customer_id=a, **STEWARD), timeout=5)

    async def gone():
        try:
            await get_profile(stub, a)
        except grpc.aio.AioRpcError as error:
            return error.code() == grpc.StatusCode.NOT_FOUND
        return False

    await eventually(gone)
    # Published for the decision's caches: the erased customer and the one merged into it.
    assert set(await asyncio.wait_for(anext(changes), 5)) == {a, b}
    for customer_id in (a, b):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await get_profile(stub, customer_id)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    for table in (profile_events, profile_states, profile_segment_members):
        assert await count(engine, table, table.c.customer_id.in_([a, b])) == 0
    assert await count(engine, profile_aliases) == 0
    # Nobody else was touched.
    assert (await get_profile(stub, other)).traits.order_count == 1
    assert await count(engine, profile_segment_members, profile_segment_members.c.customer_id == other) == 1
    # A late event naming an erased customer is refused, not the start of a new profile.
    late = await stub.IngestEvents(
        pb.IngestEventsRequest(events=[purchase("late-b", b, 9.0, 0.1), purchase("o-2", other, 1.0, 0.1)]), timeout=5
    )
    assert late.accepted == 1
    assert [(r.index, r.field, r.reason) for r in late.rejected] == [(0, "customer_id", f"customer {b} was erased")]
    assert await count(engine, profile_events, profile_events.c.customer_id.in_([a, b])) == 0


async def test_a_chain_of_merges_folds_transitively_and_unwinds_newest_first(identity, profile):
    identity_stub, _ = identity
    stub, app = profile
    a, b, c = [await customer(identity_stub, f"{name}@example.com") for name in ("kai", "kim", "kit")]
    await ingest(stub, purchase("a-1", a, 1.0, 3), purchase("b-1", b, 10.0, 2), purchase("c-1", c, 100.0, 1))
    first = await identity_stub.Merge(
        ipb.MergeRequest(survivor_customer_id=b, merged_customer_id=c, **STEWARD), timeout=5
    )
    second = await identity_stub.Merge(
        ipb.MergeRequest(survivor_customer_id=a, merged_customer_id=b, **STEWARD), timeout=5
    )
    await eventually(lambda: _has_orders(stub, a, 3))
    assert (await get_profile(stub, c)).customer_id == a  # c -> b -> a
    assert (await get_profile(stub, a)).traits.total_spend == pytest.approx(111.0)
    # A late event of the first merged customer reaches the end of the chain.
    await ingest(stub, purchase("c-late", c, 1000.0, 0.5))
    assert (await get_profile(stub, a)).traits.total_spend == pytest.approx(1111.0)

    await identity_stub.Unmerge(ipb.UnmergeRequest(merge_id=second.merge_id, **STEWARD), timeout=5)
    await eventually(lambda: _has_orders(stub, a, 1))
    restored_b = await get_profile(stub, b)
    assert (restored_b.customer_id, restored_b.traits.total_spend) == (b, pytest.approx(1110.0))  # b with c
    await identity_stub.Unmerge(ipb.UnmergeRequest(merge_id=first.merge_id, **STEWARD), timeout=5)
    await eventually(lambda: _has_orders(stub, b, 1))
    assert (await get_profile(stub, c)).traits.total_spend == pytest.approx(1100.0)
    assert await count(app.parts["engine"], profile_aliases) == 0


async def test_an_event_racing_a_merge_lands_in_the_survivor_never_in_a_revived_profile(identity, profile):
    identity_stub, _ = identity
    stub, app = profile
    a, b = await customer(identity_stub, "rae@example.com"), await customer(identity_stub, "ray@example.com")
    await ingest(stub, purchase("a-1", a, 1.0, 3), purchase("b-1", b, 10.0, 2))
    now = utcnow()
    async with app.parts["repository"].transaction() as tx:  # a merge being applied, as LineageFollower does it
        await tx.lock_states(sorted([a, b]), now)
        await tx.add_alias(b, a, "m_race", now)
        await tx.save_states({a: fold(await tx.events_of([a, b]), now)}, now)
        await tx.delete_profiles([b])
        # On PostgreSQL the batch stores its event and waits for b's state lock, then finds b merged and starts
        # again; on SQLite it waits for the write lock.
        racing = asyncio.ensure_future(ingest(stub, purchase("b-race", b, 100.0, 0.1)))
        await asyncio.sleep(0.5)
        assert not racing.done()
    await racing
    assert (await get_profile(stub, a)).traits.total_spend == pytest.approx(111.0)
    assert await count(app.parts["engine"], profile_states, profile_states.c.customer_id == b) == 0
    assert await count(app.parts["engine"], profile_events, profile_events.c.customer_id == b) == 2


async def test_the_profile_serves_while_identity_is_down_and_catches_up_when_it_is_back(
    serve, database_url, tmp_path
):
    with socket.socket() as probe:  # a port nobody listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = build(profile_settings(database_url, tmp_path, f"127.0.0.1:{port}"))
    _, channel = await serve(app)
    stub = pb_grpc.ProfileServiceStub(channel)
    await ingest(stub, purchase("a-1", "c_a", 1.0, 2), purchase("b-1", "c_b", 2.0, 1))
    await asyncio.sleep(0.2)  # several failed polls meanwhile
    assert (await get_profile(stub, "c_a")).traits.order_count == 1

    identity_app = build_identity(
        IdentitySettings(database_url=database_url, port=port, common=CommonSettings(data_dir=tmp_path))
    )
    identity_server = GrpcServer(identity_app, "127.0.0.1", port, grace=0.5)
    await identity_server.start()
    identity_channel = open_channel(f"127.0.0.1:{port}")
    # gRPC shares the profile's subchannel to this address, which may still be backing off from the refused
    # connections: wait for the reconnect (at most the 2 s maximum backoff) instead of failing fast.
    await asyncio.wait_for(identity_channel.channel_ready(), 10)
    try:
        identity_stub = ipb_grpc.IdentityServiceStub(identity_channel)
        a, b = await customer(identity_stub, "back-a@example.com"), await customer(identity_stub, "back-b@example.com")
        await ingest(stub, purchase("a-2", a, 1.0, 2), purchase("b-2", b, 2.0, 1))
        await identity_stub.Merge(ipb.MergeRequest(survivor_customer_id=a, merged_customer_id=b, **STEWARD))
        await eventually(lambda: _has_orders(stub, a, 2))
    finally:
        await identity_channel.close()
        await identity_server.stop()


async def _has_orders(stub, customer_id: str, orders: int) -> bool:
    return (await get_profile(stub, customer_id)).traits.order_count == orders


async def test_journal_is_applied_once_across_restarts_and_concurrent_followers(
    serve, database_url, tmp_path, identity
):
    identity_stub, target = identity
    settings = profile_settings(database_url, tmp_path, target, poll=3600)  # only the start-up catch-up runs
    server, channel = await serve(build(settings))
    stub = pb_grpc.ProfileServiceStub(channel)
    a, b, c = [await customer(identity_stub, f"{name}@example.com") for name in ("una", "uno", "ute")]
    await ingest(stub, purchase("a-1", a, 10.0, 3), purchase("b-1", b, 20.0, 2), purchase("c-1", c, 40.0, 1))
    await server.stop()

    # While the profile is down: two merges and an unmerge of the first.
    first = await identity_stub.Merge(
        ipb.MergeRequest(survivor_customer_id=a, merged_customer_id=b, **STEWARD), timeout=5
    )
    await identity_stub.Merge(ipb.MergeRequest(survivor_customer_id=a, merged_customer_id=c, **STEWARD), timeout=5)
    await identity_stub.Unmerge(ipb.UnmergeRequest(merge_id=first.merge_id, **STEWARD), timeout=5)
    journal = (await identity_stub.ListLineage(ipb.ListLineageRequest(), timeout=5)).entries
    assert [e.kind for e in journal] == [ipb.LINEAGE_KIND_MERGE, ipb.LINEAGE_KIND_MERGE, ipb.LINEAGE_KIND_UNMERGE]

    # Two followers on the same database at once (two replicas): each entry is applied by exactly one.
    followers, engines, clients = [], [], []
    for _ in range(2):
        engine = create_engine(database_url)
        await migrate_schema(engine)
        client = IdentityClient(target, 1.0)
        client.open()
        engines.append(engine)
        clients.append(client)
        repository = SqlProfileRepository(engine)
        followers.append(LineageFollower(repository, client, SegmentRegistry(), utcnow, 3600))
    try:
        applied = await asyncio.gather(*(follower.catch_up() for follower in followers))
        assert sum(applied) == 3
        assert await followers[0].catch_up() == 0
        async with engines[0].connect() as connection:
            assert await connection.scalar(select(profile_lineage_cursor.c.seq)) == journal[-1].seq
    finally:
        for client in clients:
            await client.close()
        for engine in engines:
            await engine.dispose()

    # A restarted profile finds the cursor at the end: nothing is applied again, and the answers are right.
    restarted = build(settings)
    _, channel = await serve(restarted)
    stub = pb_grpc.ProfileServiceStub(channel)
    assert await restarted.parts["lineage"].catch_up() == 0
    assert (await get_profile(stub, a)).traits.total_spend == pytest.approx(50.0)  # a + c
    assert (await get_profile(stub, b)).traits.total_spend == pytest.approx(20.0)  # split back
    assert (await get_profile(stub, c)).customer_id == a


