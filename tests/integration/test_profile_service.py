"""The profile service end to end over gRPC, on real SQLite and PostgreSQL: ingest, reads, rejections,
idempotency (repeats, restarts, concurrent producers), identity resolution through the real identity service."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from nextbest.common.v1 import common_pb2 as common
from nextbest.identity.v1 import identity_service_pb2 as ipb
from nextbest.identity.v1 import identity_service_pb2_grpc as ipb_grpc
from nextbest.profile.v1 import profile_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc
from sqlalchemy import func, select, text

from libs.protoconv import from_timestamp, to_duration, to_timestamp
from libs.settings import CommonSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.profile.app import build
from services.profile.domain import FEATURE_NAMES
from services.profile.settings import ProfileSettings
from services.profile.storage import profile_events, profile_states
from tests.integration.polling import until

pytestmark = pytest.mark.integration
#: For tests of what only PostgreSQL has (LISTEN/NOTIFY between replicas, lz4 compression, fillfactor).
postgres_only = pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)

EMAIL = common.IDENTIFIER_TYPE_EMAIL
NOW = datetime.now(UTC).replace(microsecond=0)


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def event(event_id: str, customer_id: str = "c-1", when: datetime | None = None, **payload) -> pb.Event:
    """An event with one payload given as keyword (e.g. purchase=pb.Purchase(...))."""
    return pb.Event(
        event_id=event_id,
        customer_id=customer_id,
        occurred_at=to_timestamp(when or ago(hours=1)),
        source="test",
        **payload,
    )


def buy(*lines: tuple[int, float, float], shipped: bool = False, fee: float = 0.0) -> pb.Purchase:
    return pb.Purchase(
        order_id="o-1",
        lines=[
            pb.OrderLine(sku=f"SKU-{i}", quantity=qty, unit_price=unit, list_price=listed)
            for i, (qty, unit, listed) in enumerate(lines)
        ],
        shipped=shipped,
        shipping_fee=fee,
        channel=common.CHANNEL_WEB,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def settings_for(database_url: str, tmp_path, identity_target: str, **overrides) -> ProfileSettings:
    return ProfileSettings(
        database_url=database_url,
        port=0,
        identity_target=identity_target,
        common=CommonSettings(data_dir=tmp_path),
        **overrides,
    )


@pytest.fixture
async def identity_target(serve, database_url, tmp_path) -> str:
    """A real identity service in this process, sharing the test database (its own tables)."""
    settings = IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path))
    server, _ = await serve(build_identity(settings))
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def profile(serve, database_url, tmp_path, identity_target):
    """A stub to a freshly started profile service wired to the identity service, and its app."""
    app = build(settings_for(database_url, tmp_path, identity_target, max_batch=50, recent_activity=5))
    _, channel = await serve(app)
    return pb_grpc.ProfileServiceStub(channel), app


async def ingest(stub, *events: pb.Event) -> pb.IngestEventsResponse:
    return await stub.IngestEvents(pb.IngestEventsRequest(events=events), timeout=10)


async def expect_error(call, code: grpc.StatusCode, details: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code
    assert error.value.details().startswith(details), error.value.details()


async def row_counts(app) -> tuple[int, int]:
    async with app.parts["engine"].connect() as connection:
        events = await connection.scalar(select(func.count()).select_from(profile_events))
        states = await connection.scalar(select(func.count()).select_from(profile_states))
    return events, states


HISTORY = [
    event("e-buy-1", when=ago(days=20), purchase=buy((2, 40.0, 50.0), (1, 20.0, 20.0), shipped=True, fee=4.95)),
    event("e-buy-2", when=ago(days=3), purchase=buy((1, 60.0, 0.0))),
    event("e-ret", when=ago(days=2), product_return=pb.ProductReturn(
        order_id="o-1",
        lines=[pb.ReturnLine(sku="SKU-0", quantity=1, refund_amount=40.0)],
        method=pb.RETURN_METHOD_STORE,
    )),
    event("e-view", when=ago(hours=5), product_view=pb.ProductView(
        sku="SKU-9", dwell=to_duration(timedelta(seconds=42)),
    )),
    event("e-cart", when=ago(hours=4), cart_change=pb.CartChange(
        action=pb.CART_ACTION_ADD, sku="SKU-9", quantity=2, unit_price=15.0,
    )),
    event("e-loyal", when=ago(days=1), loyalty_change=pb.LoyaltyChange(points_delta=250, tier=pb.LOYALTY_TIER_GOLD)),
    event("e-call", when=ago(hours=3), service_contact=pb.ServiceContact(reason="complaint")),
    event("e-pref", when=ago(hours=2), preference_update=pb.PreferenceUpdate(sizes=["M"], shipping_method="express")),
    event("e-offer", when=ago(hours=1), offer_response=pb.OfferResponse(
        decision_id="d-1", offer_id="off-1", response=pb.OFFER_RESPONSE_TYPE_ACCEPT)),
]


async def test_ingested_events_build_the_profile_and_the_features(profile):
    stub, _ = profile
    answer = await ingest(stub, *HISTORY)
    assert (answer.accepted, answer.duplicates, list(answer.rejected)) == (len(HISTORY), 0, [])

    reply = await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1", include_features=True), timeout=5)
    got = reply.profile
    traits = got.traits
    assert got.customer_id == "c-1"
    assert traits.total_spend == pytest.approx(160.0)
    assert traits.order_count == 2
    assert traits.average_order_value == pytest.approx(80.0)
    assert from_timestamp(traits.last_purchase_at) == ago(days=3)
    assert traits.days_since_last_purchase == 3
    assert traits.return_rate == pytest.approx(0.25)
    assert traits.return_count == 1 and traits.recent_returns == 1
    assert dict(traits.return_method_mix) == pytest.approx({"store": 1.0, "mail": 0.0, "courier": 0.0})
    assert traits.full_price_share == pytest.approx(2 / 4)  # 1 at list + 1 unknown list price, of 4 units
    assert traits.shipping_paid_share == 1.0
    assert (traits.loyalty_tier, traits.loyalty_points) == (pb.LOYALTY_TIER_GOLD, 250)
    assert (traits.open_service_issues, traits.service_contacts) == (1, 1)
    assert [(v.sku, v.dwell.seconds) for v in traits.last_viewed] == [("SKU-9", 42)]
    assert [(line.sku, line.quantity, line.unit_price) for line in traits.cart] == [("SKU-9", 2, 15.0)]
    assert (list(traits.preferences.sizes), traits.preferences.shipping_method) == (["M"], "express")
    assert traits.net_value == pytest.approx(120.0)
    assert from_timestamp(got.first_seen_at) == ago(days=20)
    assert abs(from_timestamp(got.updated_at) - datetime.now(UTC)) < timedelta(minutes=1)
    # Newest first, limited to the configured 5, each with a readable summary.
    assert [(a.event_id, a.kind) for a in got.recent_activity] == [
        ("e-offer", "offer_response"), ("e-pref", "preference_update"), ("e-call", "service_contact"),
        ("e-cart", "cart_change"), ("e-view", "product_view"),
    ]
    assert got.recent_activity[4].summary == "viewed SKU-9 for 42s"
    assert from_timestamp(got.recent_activity[0].occurred_at) == ago(hours=1)

    assert set(reply.features) == set(FEATURE_NAMES)
    assert reply.features["cart_value"] == 30.0 and reply.features["offer_accepts"] == 1.0
    features = await stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1"), timeout=5)
    assert features.customer_id == "c-1"
    assert dict(features.features) == dict(reply.features)
    plain = await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)
    assert len(plain.features) == 0
    lean = await stub.GetProfile(
        pb.GetProfileRequest(customer_id="c-1", include_features=True, omit_recent_activity=True), timeout=5
    )
    assert len(lean.profile.recent_activity) == 0 and lean.profile.traits == got.traits
    assert dict(lean.features) == dict(reply.features)


@postgres_only
async def test_states_are_compressed_with_lz4_on_postgresql(profile):
    stub, app = profile
    # The cart's log keeps its last changes: enough of them take the state past the 2 KB TOAST threshold, as most
    # real states are, and ingest rewrites them all the time (migration 0005).
    changes = [
        event(f"cart-{n}", when=ago(minutes=n), cart_change=pb.CartChange(
            action=pb.CART_ACTION_ADD, sku=f"SKU-{n}", quantity=1, unit_price=10.0 + n))
        for n in range(1, 101)
    ]
    for start in range(0, len(changes), 50):
        await ingest(stub, *changes[start : start + 50])
    async with app.parts["engine"].connect() as connection:
        setting = await connection.scalar(text(
            "SELECT attcompression FROM pg_attribute WHERE attrelid = 'profile_states'::regclass AND attname = 'state'"
        ))
        stored = await connection.scalar(text(
            "SELECT pg_column_compression(state) FROM profile_states WHERE customer_id = 'c-1'"
        ))
    assert (setting, stored) == (b"l", "lz4")
    profile = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)).profile
    assert (profile.traits.cart[0].sku, profile.traits.cart[0].unit_price) == ("SKU-100", 110.0)  # decompressed


@postgres_only
async def test_state_pages_keep_room_for_rewrites_on_postgresql(profile):
    # Ingest rewrites a state in every batch that folds one of its events: with room on the page the new version
    # is a heap-only update, pruned on the page without vacuum (migration 0006).
    stub, app = profile
    for n in range(1, 4):
        await ingest(stub, event(f"view-{n}", when=ago(minutes=n), product_view=pb.ProductView(sku=f"SKU-{n}")))
    async with app.parts["engine"].connect() as connection:
        options = await connection.scalar(text("SELECT reloptions FROM pg_class WHERE oid = 'profile_states'::regclass"))
    assert options == ["fillfactor=70"]
    profile = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)).profile
    assert [view.sku for view in profile.traits.last_viewed] == ["SKU-1", "SKU-2", "SKU-3"]


async def test_malformed_events_are_rejected_by_index_and_field_and_the_rest_applied(profile):
    stub, app = profile
    answer = await ingest(
        stub,
        event("ok-1", purchase=buy((1, 10.0, 10.0))),
        event("bad-qty", purchase=buy((1, 10.0, 10.0), (0, 5.0, 5.0))),
        pb.Event(event_id="bad-payload", customer_id="c-1", occurred_at=to_timestamp(ago(hours=1)), source="web"),
        event("bad-who", customer_id="", page_view=pb.PageView(page="home")),
        event("bad-time", customer_id="c-2", when=NOW + timedelta(hours=1), page_view=pb.PageView(page="home")),
        event("", page_view=pb.PageView(page="home")),
        event("ok-2", cart_change=pb.CartChange(action=pb.CART_ACTION_CLEAR)),
        event("bad-enum", product_return=pb.ProductReturn(lines=[pb.ReturnLine(sku="S", quantity=1)], method=9)),
        pb.Event(event_id="bad-source", customer_id="c-1", occurred_at=to_timestamp(ago(hours=1)),
                 page_view=pb.PageView(page="home")),
    )
    assert (answer.accepted, answer.duplicates) == (2, 0)
    assert [(r.index, r.event_id, r.field) for r in answer.rejected] == [
        (1, "bad-qty", "purchase.lines[1].quantity"),
        (2, "bad-payload", "payload"),
        (3, "bad-who", "customer_id"),
        (4, "bad-time", "occurred_at"),
        (5, "", "event_id"),
        (7, "bad-enum", "product_return.method"),
        (8, "bad-source", "source"),
    ]
    assert answer.rejected[0].reason == "must be at least 1, got 0"
    assert answer.rejected[5].reason == "unknown value #9"  # a number from a newer contract
    got = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)).profile
    assert got.traits.order_count == 1 and got.traits.total_spend == 10.0  # nothing of bad-qty applied
    assert {a.event_id for a in got.recent_activity} == {"ok-1", "ok-2"}
    assert await row_counts(app) == (2, 1)
    missing = stub.GetProfile(pb.GetProfileRequest(customer_id="c-2"), timeout=5)
    await expect_error(missing, grpc.StatusCode.NOT_FOUND, "customer 'c-2'")


async def test_bad_requests_get_precise_statuses(profile):
    stub, app = profile
    await expect_error(ingest(stub), grpc.StatusCode.INVALID_ARGUMENT, "events: at least one")
    too_many = [event(f"e-{i}", page_view=pb.PageView(page="home")) for i in range(51)]
    await expect_error(ingest(stub, *too_many), grpc.StatusCode.INVALID_ARGUMENT, "events: at most 50 events")
    assert await row_counts(app) == (0, 0)
    for call in (
        stub.GetProfile(pb.GetProfileRequest(), timeout=5),
        stub.GetFeatures(pb.GetFeaturesRequest(), timeout=5),
    ):
        await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "customer_id: required")
    for call in (
        stub.GetProfile(pb.GetProfileRequest(customer_id="nobody"), timeout=5),
        stub.GetFeatures(pb.GetFeaturesRequest(customer_id="nobody"), timeout=5),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND, "customer 'nobody' has no profile")


async def test_the_same_batch_twice_is_applied_once(profile):
    stub, _ = profile
    first = await ingest(stub, *HISTORY)
    before = await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1", include_features=True), timeout=5)
    again = await ingest(stub, *HISTORY)
    assert (first.accepted, first.duplicates) == (len(HISTORY), 0)
    assert (again.accepted, again.duplicates, list(again.rejected)) == (0, len(HISTORY), [])
    after = await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1", include_features=True), timeout=5)
    assert after == before  # not even updated_at moved
    # Within one batch, a repeated id is a duplicate too.
    repeated = await ingest(
        stub, event("e-new", page_view=pb.PageView(page="a")), event("e-new", page_view=pb.PageView(page="b"))
    )
    assert (repeated.accepted, repeated.duplicates) == (1, 1)


async def test_applied_ids_are_remembered_across_a_restart(serve, database_url, tmp_path, identity_target):
    settings = settings_for(database_url, tmp_path, identity_target)
    server, channel = await serve(build(settings))
    assert (await ingest(pb_grpc.ProfileServiceStub(channel), *HISTORY)).accepted == len(HISTORY)
    await server.stop()
    _, channel = await serve(build(settings))
    stub = pb_grpc.ProfileServiceStub(channel)
    answer = await ingest(stub, *HISTORY)
    assert (answer.accepted, answer.duplicates) == (0, len(HISTORY))
    assert (await stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1"), timeout=5)).features["order_count"] == 2.0


async def test_concurrent_batches_with_overlapping_ids_apply_each_event_once(profile):
    stub, app = profile
    customers = [f"c-{i}" for i in range(7)]
    # Existing customers: concurrent batches then meet on their state rows, not only on creating them.
    await ingest(stub, *(event(f"seed-{c}", c, ago(days=9), page_view=pb.PageView(page="home")) for c in customers))
    # Twelve producers, 40 events each; neighbouring windows overlap, so many ids are sent twice at once.
    starts = range(0, 240, 20)
    batches = [
        [
            event(f"e-{n:03d}", customers[n % 7], ago(minutes=n), purchase=buy((1, 1.0 + n, 0.0)))
            for n in range(start, start + 40)
        ]
        for start in starts
    ]
    answers = await asyncio.gather(*(ingest(stub, *batch) for batch in batches))
    distinct = {n for start in starts for n in range(start, start + 40)}
    assert sum(a.accepted for a in answers) == len(distinct)
    assert sum(a.duplicates for a in answers) == len(starts) * 40 - len(distinct)
    # No lost update: every customer's state saw each of its events exactly once.
    for i, customer in enumerate(customers):
        mine = [n for n in distinct if n % 7 == i]
        features = (await stub.GetFeatures(pb.GetFeaturesRequest(customer_id=customer), timeout=5)).features
        assert features["order_count"] == len(mine)
        assert features["total_spend"] == pytest.approx(sum(1.0 + n for n in mine))
    assert await row_counts(app) == (len(distinct) + len(customers), len(customers))


async def test_identifiers_are_resolved_through_the_identity_service(profile, identity_target):
    stub, _ = profile
    events = [
        event("web-1", customer_id="", when=ago(hours=3), page_view=pb.PageView(page="home")),
        event("web-2", customer_id="", when=ago(hours=2), purchase=buy((1, 25.0, 25.0))),
        event("web-bad", customer_id="", page_view=pb.PageView(page="home")),
    ]
    events[0].identifiers.append(common.Identifier(type=EMAIL, value="Ann@Example.com"))
    events[1].identifiers.append(common.Identifier(type=EMAIL, value="  ann@example.COM "))  # same after normalising
    events[2].identifiers.extend(
        [common.Identifier(type=EMAIL, value="ann@example.com"), common.Identifier(type=EMAIL, value="not-an-email")]
    )
    answer = await ingest(stub, *events)
    assert answer.accepted == 2
    assert [(r.index, r.field) for r in answer.rejected] == [(2, "identifiers[1].value")]

    async with grpc.aio.insecure_channel(identity_target) as channel:
        resolved = await ipb_grpc.IdentityServiceStub(channel).Resolve(
            ipb.ResolveRequest(identifiers=[common.Identifier(type=EMAIL, value="ann@example.com")]), timeout=5
        )
    got = (await stub.GetProfile(pb.GetProfileRequest(customer_id=resolved.customer_id), timeout=5)).profile
    assert got.traits.order_count == 1
    assert [a.event_id for a in got.recent_activity] == ["web-2", "web-1"]


def by_email(event_id: str, email: str) -> pb.Event:
    message = event(event_id, customer_id="", page_view=pb.PageView(page="home"))
    message.identifiers.append(common.Identifier(type=EMAIL, value=email))
    return message


async def stored_customer(app, event_id: str) -> str:
    async with app.parts["engine"].connect() as connection:
        return await connection.scalar(select(profile_events.c.customer_id).where(profile_events.c.event_id == event_id))


async def test_resolutions_are_cached_until_identity_changes_the_customer(profile, identity_target):
    stub, app = profile
    resolutions = app.parts["identity"].resolutions
    await until(lambda: resolutions.live)  # identity's change feed is subscribed
    await ingest(stub, by_email("ann-1", "ann@example.com"))
    await ingest(stub, by_email("ann-2", "ann@example.com"))
    assert (resolutions.stats.misses, resolutions.stats.hits) == (1, 1)  # one Resolve for both batches
    ann = await stored_customer(app, "ann-2")

    async with grpc.aio.insecure_channel(identity_target) as channel:
        identity = ipb_grpc.IdentityServiceStub(channel)
        bob = (await identity.Resolve(ipb.ResolveRequest(
            identifiers=[common.Identifier(type=EMAIL, value="bob@example.com")], create_if_missing=True), timeout=5
        )).customer_id
        steward = {"reason": "same person", "actor": "steward-1"}
        await identity.Merge(ipb.MergeRequest(survivor_customer_id=bob, merged_customer_id=ann, **steward), timeout=5)
        await until(lambda: len(resolutions) == 0)  # the merge dropped Ann's entry
        await ingest(stub, by_email("ann-3", "ann@example.com"))
        assert await stored_customer(app, "ann-3") == bob  # resolved afresh: her e-mail is Bob's now

        await identity.Forget(ipb.ForgetRequest(customer_id=bob, **steward), timeout=5)
        await until(lambda: len(resolutions) == 0)
    # A stale entry would name the erased customer, whose events are refused; afresh, the e-mail is a newcomer.
    answer = await ingest(stub, by_email("ann-4", "ann@example.com"))
    assert (answer.accepted, list(answer.rejected)) == (1, [])
    assert await stored_customer(app, "ann-4") not in (ann, bob)


async def test_identity_down_fails_the_call_with_unavailable_and_applies_nothing(serve, database_url, tmp_path):
    app = build(settings_for(database_url, tmp_path, f"127.0.0.1:{free_port()}", identity_timeout_seconds=0.5))
    _, channel = await serve(app)
    stub = pb_grpc.ProfileServiceStub(channel)
    anonymous = event("anon-1", customer_id="", purchase=buy((1, 5.0, 5.0)))
    anonymous.identifiers.append(common.Identifier(type=EMAIL, value="bob@example.com"))
    known = event("known-1", purchase=buy((1, 5.0, 5.0)))
    await expect_error(
        ingest(stub, known, anonymous), grpc.StatusCode.UNAVAILABLE, "identity service could not resolve"
    )
    assert await row_counts(app) == (0, 0)
    missing = stub.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)
    await expect_error(missing, grpc.StatusCode.NOT_FOUND, "customer 'c-1'")
    # Batches that need no resolving still go through while identity is down.
    assert (await ingest(stub, known)).accepted == 1


async def test_cached_states_are_reread_after_another_replica_wrote_and_dropped_after_a_failed_batch(
    serve, database_url, tmp_path, identity_target, monkeypatch
):
    """The ingest path keeps the states it committed (checked by row version): two replicas writing the same
    customer in turn never fold onto a stale state, and a batch that fails after folding leaves nothing behind."""
    from services.profile.storage import SqlIngestTransaction

    replicas = []
    for _ in range(2):
        _, channel = await serve(build(settings_for(database_url, tmp_path, identity_target)))
        replicas.append(pb_grpc.ProfileServiceStub(channel))
    first, second = replicas

    async def orders() -> int:
        reply = await first.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)
        return reply.profile.traits.order_count

    for i, stub in enumerate([first, second, first, first, second]):
        reply = await ingest(stub, event(f"r-{i}", purchase=buy((1, 10.0, 10.0))))
        assert reply.accepted == 1
    assert await orders() == 5  # each replica re-read what the other wrote

    original = SqlIngestTransaction.save_states

    async def save_then_fail(self, states, now):
        await original(self, states, now)
        raise RuntimeError("connection lost before commit")

    monkeypatch.setattr(SqlIngestTransaction, "save_states", save_then_fail)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await ingest(first, event("r-failed", purchase=buy((1, 10.0, 10.0))))
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    monkeypatch.setattr(SqlIngestTransaction, "save_states", original)
    assert (await ingest(first, event("r-after", purchase=buy((1, 10.0, 10.0))))).accepted == 1
    assert await orders() == 6  # the failed batch's folded state was not reused
