"""StreamEvents, the new event kinds, segments (RPCs, membership kept by ingest, pagination, restarts), the
GetProfile field mask and GetFeatures by names, over gRPC on real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from nextbest.common.v1 import common_pb2 as common
from nextbest.profile.v1 import profile_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc
from sqlalchemy import func, select

from libs.protoconv import from_timestamp, to_duration
from libs.settings import CommonSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.profile.app import build
from services.profile.domain import FEATURE_NAMES
from services.profile.storage import profile_events, profile_segment_members
from tests.integration.test_profile_service import EMAIL, ago, buy, event, expect_error, ingest, settings_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def identity_target(serve, database_url, tmp_path) -> str:
    settings = IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path))
    server, _ = await serve(build_identity(settings))
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def profile(serve, database_url, tmp_path, identity_target):
    app = build(settings_for(database_url, tmp_path, identity_target, max_batch=50, recent_activity=5))
    _, channel = await serve(app)
    return pb_grpc.ProfileServiceStub(channel), app




def stream_of(*batches: list[pb.Event]):
    async def messages():
        for batch in batches:
            yield pb.StreamEventsRequest(events=batch)

    return messages()


async def test_stream_applies_every_batch_and_counts_rejections_across_messages(profile):
    stub, app = profile
    first = [event(f"s-{i}", customer_id=f"c-{i % 7}", purchase=buy((1, 10.0, 10.0))) for i in range(40)]
    second = [
        event("s-0", customer_id="c-0", purchase=buy((1, 10.0, 10.0))),  # a duplicate of the first message
        event("bad", search=pb.Search(query="")),
        event("by-email", customer_id="", identifiers=[common.Identifier(type=EMAIL, value="ann@example.com")],
              login=pb.Login(channel=common.CHANNEL_WEB)),
    ]
    reply = await stub.StreamEvents(stream_of(first, [], second), timeout=20)
    assert (reply.accepted, reply.duplicates) == (41, 1)
    assert [(r.index, r.event_id, r.field) for r in reply.rejected] == [(41, "bad", "search.query")]
    # Re-sending the whole stream applies nothing again.
    again = await stub.StreamEvents(stream_of(first, second), timeout=20)
    assert (again.accepted, again.duplicates, len(again.rejected)) == (0, 42, 1)
    async with app.parts["engine"].connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(profile_events)) == 41
    totals = [
        (await stub.GetProfile(pb.GetProfileRequest(customer_id=f"c-{c}"), timeout=5)).profile.traits.order_count
        for c in range(7)
    ]
    assert sum(totals) == 40


async def test_a_stream_message_over_the_batch_limit_fails_the_stream(profile):
    stub, _ = profile
    too_big = [event(f"big-{i}", page_view=pb.PageView(page="home")) for i in range(51)]  # max_batch=50
    await expect_error(stub.StreamEvents(stream_of(too_big), timeout=10), grpc.StatusCode.INVALID_ARGUMENT, "events")


async def test_new_event_kinds_feed_their_traits(profile):
    stub, _ = profile
    answer = await ingest(
        stub,
        event("n-1", when=ago(days=40), purchase=pb.Purchase(
            order_id="o-1", channel=common.CHANNEL_POS, store_id="s-9",
            lines=[pb.OrderLine(sku="SKU-1-42", quantity=2, unit_price=50.0, list_price=60.0,
                                category="shoes", brand="acme", size="42", colour="red")],
        )),
        event("n-2", when=ago(days=2), search=pb.Search(query="red boots", results=12)),
        event("n-3", when=ago(days=2), cart_abandoned=pb.CartAbandoned(cart_value=80.0, items=1)),
        event("n-4", when=ago(days=1), checkout=pb.Checkout(cart_value=80.0, items=1, channel=common.CHANNEL_WEB)),
        event("n-5", when=ago(hours=5), store_visit=pb.StoreVisit(store_id="s-9", duration=to_duration(
            timedelta(minutes=20)))),
        event("n-6", when=ago(hours=3), login=pb.Login(channel=common.CHANNEL_WEB)),
        event("n-7", when=ago(hours=2), ledger_entry=pb.LedgerEntry(
            type=pb.LEDGER_ENTRY_TYPE_WRITE_OFF, amount=15.0, order_id="o-1")),
        event("n-bad", ledger_entry=pb.LedgerEntry(amount=15.0)),
    )
    assert answer.accepted == 7
    assert [(r.event_id, r.field) for r in answer.rejected] == [("n-bad", "ledger_entry.type")]
    got = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)).profile
    traits = got.traits
    assert (traits.spend_30d, traits.spend_90d, traits.orders_90d) == (0.0, 100.0, 1)
    assert list(traits.favourite_categories) == ["shoes"] and list(traits.favourite_sizes) == ["42"]
    assert traits.preferred_channel == "pos"
    assert (traits.searches, list(traits.recent_searches)) == (1, ["red boots"])
    assert (traits.cart_abandonments, traits.checkouts) == (1, 1)
    assert (traits.store_visits, traits.last_store_id) == (1, "s-9")
    assert traits.logins == 1 and from_timestamp(traits.last_login_at) == ago(hours=3)
    assert (traits.write_offs, traits.net_value) == (15.0, 85.0)
    # The write-off of two hours ago is net of this month's spend; the purchase of 40 days ago is only in 90 days'.
    assert (traits.net_spend_30d, traits.net_spend_90d, traits.net_spend_365d) == (-15.0, 85.0, 85.0)
    assert [a.summary for a in got.recent_activity][:2] == ["ledger write-off 15.00", "signed in on web"]


async def test_field_mask_returns_only_the_asked_fields(profile):
    stub, _ = profile
    await ingest(stub, event("m-1", purchase=buy((1, 10.0, 10.0))))
    masked = await stub.GetProfile(pb.GetProfileRequest(
        customer_id="c-1", read_mask=FieldMask(paths=["traits.total_spend", "customer_id"])), timeout=5)
    assert masked.profile.customer_id == "c-1"
    assert masked.profile.traits.total_spend == 10.0
    assert masked.profile.traits.order_count == 0  # not asked for
    assert len(masked.profile.recent_activity) == 0 and not masked.profile.HasField("updated_at")
    with_activity = await stub.GetProfile(pb.GetProfileRequest(
        customer_id="c-1", read_mask=FieldMask(paths=["recent_activity"])), timeout=5)
    assert [a.event_id for a in with_activity.profile.recent_activity] == ["m-1"]
    await expect_error(
        stub.GetProfile(pb.GetProfileRequest(customer_id="c-1", read_mask=FieldMask(paths=["traits.nope"])),
                        timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT, "read_mask.paths[0]",
    )


async def test_field_mask_selects_model_traits_by_use_case(profile):
    stub, _ = profile
    await ingest(stub, *[
        event(f"s-{use_case}", model_prediction=pb.ModelPrediction(
            use_case=use_case, model_name="gbm", model_version="v1", value=value))
        for use_case, value in (("churn_risk", 0.7), ("lifetime_value", 420.0), ("churn.v2", 0.2))
    ])

    async def masked(*paths: str) -> pb.Profile:
        request = pb.GetProfileRequest(customer_id="c-1", read_mask=FieldMask(paths=list(paths)))
        return (await stub.GetProfile(request, timeout=5)).profile

    one = await masked("model_traits.churn_risk", "model_traits.never_scored", "customer_id")
    assert dict(one.model_traits) == {"churn_risk": pb.ModelTrait(
        value=0.7, model_name="gbm", model_version="v1", scored_at=one.model_traits["churn_risk"].scored_at)}
    assert one.customer_id == "c-1" and not one.HasField("traits")
    assert set((await masked("model_traits", "model_traits.churn_risk")).model_traits) == {
        "churn_risk", "lifetime_value", "churn.v2"}  # the whole map asked for too
    quoted = await masked("model_traits.`churn.v2`", "model_traits.`lifetime_value`")  # AIP-161 quoting
    assert set(quoted.model_traits) == {"churn.v2", "lifetime_value"}
    await expect_error(
        masked("customer_id", "model_traits.churn_risk.value"),
        grpc.StatusCode.INVALID_ARGUMENT, "read_mask.paths[1]: 'model_traits.churn_risk.value': a model trait is "
        "selected whole (quote a key holding '.' in backticks)",
    )


async def test_get_features_by_names_answers_in_the_given_order(profile):
    stub, _ = profile
    await ingest(stub, event("f-1", purchase=buy((2, 10.0, 10.0))))
    names = ["order_count", "total_spend", "cart_items"]
    reply = await stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1", names=names), timeout=5)
    assert list(reply.values) == [1.0, 20.0, 0.0]
    assert set(reply.features) == set(names)
    every = await stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1"), timeout=5)
    assert set(every.features) == set(FEATURE_NAMES) and len(every.values) == 0
    await expect_error(
        stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1", names=["total_spend", "nope"]), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT, "names[1]",
    )


async def members(stub, segment: str, page_size: int = 0) -> list[str]:
    found, token = [], ""
    while True:
        page = await stub.ListSegmentMembers(
            pb.ListSegmentMembersRequest(segment=segment, page_size=page_size, page_token=token), timeout=5
        )
        found += [m.customer_id for m in page.members]
        token = page.next_page_token
        if not token:
            return found


async def watched(stub, action) -> set[str]:
    """The customer ids WatchChanges reports while `action` runs."""
    stream = stub.WatchChanges(pb.WatchChangesRequest())
    first = await stream.read()
    assert list(first.customer_ids) == []
    await action()
    seen: set[str] = set()
    try:
        while True:
            message = await asyncio.wait_for(stream.read(), timeout=0.5)
            seen |= set(message.customer_ids)
    except TimeoutError:
        pass
    stream.cancel()
    return seen


async def test_segments_are_put_evaluated_kept_current_by_ingest_paged_and_deleted(profile):
    stub, app = profile
    await ingest(stub, *[event(f"p-{i}", customer_id=f"c-{i:02d}", purchase=buy((1, 10.0 * i, 0.0))) for i in range(12)])

    async def put():
        return await stub.PutSegment(pb.PutSegmentRequest(segment=pb.Segment(
            name="big-spenders", expression="total_spend >= 50.0", description="spent 50+")), timeout=10)

    changed = await watched(stub, put)
    assert changed == {f"c-{i:02d}" for i in range(5, 12)}  # the members' profiles changed: caches must drop them
    listed = await stub.ListSegments(pb.ListSegmentsRequest(), timeout=5)
    assert [(s.name, s.version, s.description) for s in listed.segments] == [("big-spenders", 1, "spent 50+")]
    assert await members(stub, "big-spenders", page_size=3) == [f"c-{i:02d}" for i in range(5, 12)]

    # Ingest moves customers in and out, and publishes them.
    async def spend():
        await ingest(
            stub,
            event("q-1", customer_id="c-01", purchase=buy((1, 60.0, 0.0))),
            event("q-2", customer_id="c-11", ledger_entry=pb.LedgerEntry(type=pb.LEDGER_ENTRY_TYPE_REFUND, amount=1.0)),
        )

    assert await watched(stub, spend) == {"c-01", "c-11"}
    assert await members(stub, "big-spenders") == ["c-01"] + [f"c-{i:02d}" for i in range(5, 12)]
    profile_01 = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-01"), timeout=5)).profile
    assert [m.segment for m in profile_01.segments] == ["big-spenders"]
    since = from_timestamp(profile_01.segments[0].since)

    async def member_since() -> dict[str, object]:
        page = await stub.ListSegmentMembers(pb.ListSegmentMembersRequest(segment="big-spenders"), timeout=5)
        return {m.customer_id: from_timestamp(m.since) for m in page.members}

    before = await member_since()
    # A new version re-evaluates everyone; a stale expected_version is refused.
    v2 = await stub.PutSegment(pb.PutSegmentRequest(segment=pb.Segment(
        name="big-spenders", expression="total_spend >= 100.0"), expected_version=1), timeout=10)
    assert (v2.segment.version, v2.members) == (2, 2)
    assert await members(stub, "big-spenders") == ["c-10", "c-11"]
    # Members who stay keep their "since" across versions.
    assert await member_since() == {customer: before[customer] for customer in ("c-10", "c-11")}
    history = await stub.ListSegmentVersions(pb.ListSegmentVersionsRequest(name="big-spenders"), timeout=5)
    assert [(s.version, s.expression) for s in history.versions] == [
        (2, "total_spend >= 100.0"), (1, "total_spend >= 50.0")]
    assert history.current_version == 2 and history.versions[1].description == "spent 50+"
    await expect_error(
        stub.PutSegment(pb.PutSegmentRequest(segment=pb.Segment(name="big-spenders", expression="true"),
                                             expected_version=1), timeout=5),
        grpc.StatusCode.FAILED_PRECONDITION, "segment 'big-spenders' is at version 2",
    )
    await expect_error(
        stub.PutSegment(pb.PutSegmentRequest(segment=pb.Segment(name="x", expression="nope > 1")), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT, "segment.expression: unknown variables nope",
    )
    # Members who stay keep their "since".
    await stub.PutSegment(pb.PutSegmentRequest(segment=pb.Segment(name="any", expression="order_count >= 1")),
                          timeout=10)
    again = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-01"), timeout=5)).profile
    assert [m.segment for m in again.segments] == ["any"]

    await stub.DeleteSegment(pb.DeleteSegmentRequest(name="big-spenders"), timeout=10)
    await expect_error(stub.ListSegmentMembers(pb.ListSegmentMembersRequest(segment="big-spenders"), timeout=5),
                       grpc.StatusCode.NOT_FOUND, "segment 'big-spenders'")
    await expect_error(stub.DeleteSegment(pb.DeleteSegmentRequest(name="big-spenders"), timeout=5),
                       grpc.StatusCode.NOT_FOUND, "segment 'big-spenders'")
    history = await stub.ListSegmentVersions(pb.ListSegmentVersionsRequest(name="big-spenders"), timeout=5)
    assert ([s.version for s in history.versions], history.current_version) == ([2, 1], 0)
    await expect_error(stub.ListSegmentVersions(pb.ListSegmentVersionsRequest(name="never"), timeout=5),
                       grpc.StatusCode.NOT_FOUND, "segment 'never' was never put")
    # One version per page: newest first, the version in force (none: deleted) on every page, then the end.
    first = await stub.ListSegmentVersions(pb.ListSegmentVersionsRequest(name="big-spenders", page_size=1), timeout=5)
    assert ([s.version for s in first.versions], first.current_version) == ([2], 0) and first.next_page_token
    last = await stub.ListSegmentVersions(pb.ListSegmentVersionsRequest(
        name="big-spenders", page_size=1, page_token=first.next_page_token), timeout=5)
    assert ([s.version for s in last.versions], last.next_page_token) == ([1], "")
    for request, field in (
        (pb.ListSegmentVersionsRequest(name="big-spenders", page_size=-1), "page_size"),
        (pb.ListSegmentVersionsRequest(name="big-spenders", page_size=1001), "page_size"),
        (pb.ListSegmentVersionsRequest(name="big-spenders", page_token="bm90LWEtdmVyc2lvbg=="), "page_token"),
        (pb.ListSegmentVersionsRequest(name="big-spenders", page_token="?"), "page_token"),
    ):
        await expect_error(stub.ListSegmentVersions(request, timeout=5), grpc.StatusCode.INVALID_ARGUMENT, field)
    # A bad name is INVALID_ARGUMENT naming the request's own field.
    for call, field in (
        (stub.ListSegmentVersions(pb.ListSegmentVersionsRequest(name="Bad Name"), timeout=5), "name"),
        (stub.DeleteSegment(pb.DeleteSegmentRequest(name="Bad Name"), timeout=5), "name"),
        (stub.ListSegmentMembers(pb.ListSegmentMembersRequest(segment="Bad Name"), timeout=5), "segment"),
    ):
        await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, f"{field}: 1-64 lower-case letters")
    async with app.parts["engine"].connect() as connection:
        left = await connection.scalar(select(func.count()).select_from(profile_segment_members).where(
            profile_segment_members.c.segment == "big-spenders"))
    assert left == 0
    c10 = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-10"), timeout=5)).profile
    assert [m.segment for m in c10.segments] == ["any"]
    assert since  # was set


async def test_segments_survive_a_restart_and_a_bad_page_token_is_refused(serve, database_url, tmp_path,
                                                                          identity_target):
    settings = settings_for(database_url, tmp_path, identity_target)
    _, channel = await serve(build(settings))
    stub = pb_grpc.ProfileServiceStub(channel)
    await stub.PutSegment(pb.PutSegmentRequest(segment=pb.Segment(name="gold", expression='loyalty_tier == "gold"')),
                          timeout=5)
    _, channel = await serve(build(settings))
    restarted = pb_grpc.ProfileServiceStub(channel)
    await ingest(restarted, event("g-1", loyalty_change=pb.LoyaltyChange(points_delta=5, tier=pb.LOYALTY_TIER_GOLD)))
    assert await members(restarted, "gold") == ["c-1"]
    await expect_error(
        restarted.ListSegmentMembers(pb.ListSegmentMembersRequest(segment="gold", page_token="%%%"), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT, "page_token",
    )
