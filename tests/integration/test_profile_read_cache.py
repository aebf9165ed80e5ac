"""The profile's read cache over gRPC, on real SQLite and PostgreSQL: a replica's reads show its own writes at once
(and answer exactly as an uncached replica does); on PostgreSQL another replica's write reaches the cache and the
decision's change stream by NOTIFY, and while the LISTEN connection is down reads go to the database and the cache
starts afresh once listening resumes."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import grpc
import pytest
from nextbest.profile.v1 import profile_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc
from sqlalchemy import make_url

from libs.protoconv import to_duration
from libs.server import ServiceApp
from libs.settings import CommonSettings
from services.decision.gateways import ProfileGateway
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.profile.app import build
from services.profile.storage import ReadCache
from tests.integration.polling import until
from tests.integration.test_profile_service import ago, buy, event, ingest, postgres_only, settings_for

pytestmark = pytest.mark.integration

PROFILE = pb.GetProfileRequest(customer_id="c-1", include_features=True)


@pytest.fixture
async def identity_target(serve, database_url, tmp_path) -> str:
    """A real identity service in this process, sharing the test database (its own tables)."""
    settings = IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path))
    server, _ = await serve(build_identity(settings))
    return f"127.0.0.1:{server.port}"

# postgres_only: several replicas share changes by LISTEN/NOTIFY on PostgreSQL only (one writing process on SQLite).


@pytest.fixture
def replica(serve, database_url, tmp_path, identity_target):
    """Starts a profile replica on the test database (listening, on PostgreSQL): (stub, app, its port)."""

    async def start(**overrides) -> tuple[pb_grpc.ProfileServiceStub, ServiceApp, int]:
        app = build(settings_for(database_url, tmp_path, identity_target, recent_activity=5, **overrides))
        server, channel = await serve(app)
        # On PostgreSQL, until its LISTEN session is up a replica serves from the database and keeps nothing (by
        # design): a test that counts cache hits right away would race it on a slow machine.
        if (relay := app.parts["repository"].relay) is not None:
            await until(lambda: relay.session is not None, seconds=10)
        return pb_grpc.ProfileServiceStub(channel), app, server.port

    return start


def cache_of(app: ServiceApp) -> ReadCache:
    return app.parts["repository"].reads


def purchase(event_id: str, when, amount: float = 20.0) -> pb.Event:
    return event(event_id, when=when, purchase=buy((1, amount, amount)))


async def read_twice(stub, cache: ReadCache) -> pb.GetProfileResponse:
    """GetProfile from the database (filling the cache), then again from the cache; the first answer."""
    misses = cache.misses
    first = await stub.GetProfile(PROFILE, timeout=5)
    assert cache.misses == misses + 1
    hits = cache.hits
    assert await stub.GetProfile(PROFILE, timeout=5) == first
    assert cache.hits == hits + 1
    return first


class ChangeWatcher:
    """Follows a replica's WatchChanges as the decision service does (its ProfileGateway), in the background."""

    def __init__(self, port: int) -> None:
        self.messages: list[list[str]] = []
        self.ended = asyncio.Event()
        self._gateway = ProfileGateway(f"127.0.0.1:{port}")
        self._gateway.open()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for customer_ids in self._gateway.watch_changes():
                self.messages.append(customer_ids)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        self.ended.set()

    async def subscribed(self) -> ChangeWatcher:
        await until(lambda: bool(self.messages), seconds=5)
        assert self.messages[0] == []
        return self

    def changed(self) -> set[str]:
        return {customer_id for message in self.messages[1:] for customer_id in message}

    async def close(self) -> None:
        self._task.cancel()
        await self._task
        await self._gateway.close()


class ListenBackends:
    """The test database's LISTEN connections, seen from an admin connection (to kill one replica's)."""

    def __init__(self, admin: asyncpg.Connection) -> None:
        self._admin = admin

    @classmethod
    async def open(cls, database_url: str) -> ListenBackends:
        dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        return cls(await asyncpg.connect(dsn))

    async def pids(self) -> set[int]:
        # A relay's LISTEN is its connection's last statement until it has been idle for 5 s (then a SELECT 1).
        rows = await self._admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND datname = current_database()"
        )
        return {row["pid"] for row in rows}

    async def kill(self, pid: int) -> None:
        assert await self._admin.fetchval("SELECT pg_terminate_backend($1)", pid)

    async def close(self) -> None:
        await self._admin.close()


async def test_a_replica_reads_its_own_writes_from_its_cache_as_an_uncached_replica_reads_them(replica):
    stub, app, _ = await replica()
    cache = cache_of(app)
    await ingest(stub, purchase("e-1", ago(days=2)))
    before = await read_twice(stub, cache)
    assert before.profile.traits.order_count == 1
    assert [a.event_id for a in before.profile.recent_activity] == ["e-1"]

    await ingest(
        stub,
        purchase("e-2", ago(minutes=30), amount=35.0),
        event("e-3", when=ago(minutes=10), product_view=pb.ProductView(sku="SKU-7", dwell=to_duration(timedelta(seconds=9)))),
    )
    hits = cache.hits
    after = await stub.GetProfile(PROFILE, timeout=5)
    assert cache.hits == hits + 1  # served by the cache, which the write updated (write-through)
    assert after.profile.traits.order_count == 2
    assert after.profile.traits.total_spend == pytest.approx(55.0)
    assert [(a.event_id, a.kind) for a in after.profile.recent_activity] == [
        ("e-3", "product_view"), ("e-2", "purchase"), ("e-1", "purchase"),
    ]
    assert after.profile.recent_activity[0].summary == "viewed SKU-7 for 9s"
    assert after.features["order_count"] == 2.0 and after.features["viewed_skus_7d"] == 1.0
    features = await stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1"), timeout=5)
    assert cache.hits == hits + 2
    assert dict(features.features) == dict(after.features)

    # A replica started now, with no cache, reads the database: the same answer, field for field.
    fresh_stub, fresh_app, _ = await replica(read_cache_max_entries=0)
    assert await fresh_stub.GetProfile(PROFILE, timeout=5) == after
    assert await fresh_stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1"), timeout=5) == features
    assert len(cache_of(fresh_app)) == 0 and cache_of(fresh_app).hits == 0


@postgres_only
async def test_another_replicas_write_reaches_the_cache_and_the_change_stream(replica):
    a_stub, a_app, a_port = await replica()
    b_stub, _, _ = await replica()
    cache = cache_of(a_app)
    await ingest(b_stub, purchase("e-1", ago(days=2)))
    assert (await read_twice(a_stub, cache)).profile.traits.order_count == 1  # A holds c-1 now
    watcher = await ChangeWatcher(a_port).subscribed()
    try:
        await ingest(b_stub, purchase("e-2", ago(hours=1)))

        async def a_sees_it() -> bool:
            return (await a_stub.GetProfile(PROFILE, timeout=5)).profile.traits.order_count == 2

        await until(a_sees_it, seconds=5)
        await until(lambda: "c-1" in watcher.changed(), seconds=5)
        on_a = await a_stub.GetProfile(PROFILE, timeout=5)
        assert on_a == await b_stub.GetProfile(PROFILE, timeout=5)
        assert [a.event_id for a in on_a.profile.recent_activity] == ["e-2", "e-1"]
    finally:
        await watcher.close()


@postgres_only
async def test_while_not_listening_reads_go_to_the_database_and_the_cache_starts_afresh_after(replica, database_url
):
    backends = await ListenBackends.open(database_url)
    try:
        a_stub, a_app, a_port = await replica()
        (a_listen,) = await backends.pids()
        b_stub, _, _ = await replica()
        (b_listen,) = await backends.pids() - {a_listen}
        relay = a_app.parts["repository"].relay
        cache = cache_of(a_app)
        await ingest(b_stub, purchase("e-1", ago(days=3)))
        await read_twice(a_stub, cache)

        # 1. A's LISTEN connection dies; B writes meanwhile: A misses the NOTIFY, so A reads the database.
        watcher = await ChangeWatcher(a_port).subscribed()
        await backends.kill(a_listen)
        await until(lambda: relay.session is None, seconds=5)
        await asyncio.wait_for(watcher.ended.wait(), 5)  # the decision must drop what it cached too
        await watcher.close()
        await ingest(b_stub, purchase("e-2", ago(days=2)))
        assert relay.session is None  # B committed while A was not listening: its NOTIFY never reaches A
        hits = cache.hits
        assert (await a_stub.GetProfile(PROFILE, timeout=5)).profile.traits.order_count == 2
        assert (await a_stub.GetProfile(PROFILE, timeout=5)).profile.traits.order_count == 2
        assert cache.hits == hits  # neither read was served from the cache
        await until(lambda: relay.session is not None, seconds=10)  # listening again
        assert (await read_twice(a_stub, cache)).profile.traits.order_count == 2  # and caching again

        # 2. Again, but A does not read while not listening: the entry cached before must not be served after.
        (a_listen,) = await backends.pids() - {b_listen}
        await backends.kill(a_listen)
        await until(lambda: relay.session is None, seconds=5)
        await ingest(b_stub, purchase("e-3", ago(days=1)))
        assert relay.session is None
        await until(lambda: relay.session is not None, seconds=10)
        hits, misses = cache.hits, cache.misses
        answer = await a_stub.GetProfile(PROFILE, timeout=5)
        assert answer.profile.traits.order_count == 3
        assert [a.event_id for a in answer.profile.recent_activity] == ["e-3", "e-2", "e-1"]
        assert (cache.hits, cache.misses) == (hits, misses + 1)
        assert answer == await b_stub.GetProfile(PROFILE, timeout=5)
    finally:
        await backends.close()


@postgres_only
async def test_replicas_sharing_saved_states_refill_one_anothers_caches_without_reading_the_database(replica):
    a_stub, a_app, _ = await replica(notify_saved_states=True)
    b_stub, _, _ = await replica(notify_saved_states=True)
    c_stub, c_app, _ = await replica()  # a replica that does not share (e.g. an older release): it drops and reads
    cache, c_cache = cache_of(a_app), cache_of(c_app)
    await ingest(b_stub, purchase("e-1", ago(days=2)))
    await read_twice(a_stub, cache)
    await read_twice(c_stub, c_cache)
    assert cache.held_version("c-1") == 1
    hits, misses = cache.hits, cache.misses

    await ingest(b_stub, purchase("e-2", ago(hours=1)))
    await until(lambda: cache.held_version("c-1") == 2, seconds=5)  # B's state, from its NOTIFY
    on_a = await a_stub.GetProfile(PROFILE, timeout=5)
    assert (cache.hits, cache.misses) == (hits + 1, misses)  # served from the cache: no database read
    assert on_a.profile.traits.order_count == 2
    assert [a.event_id for a in on_a.profile.recent_activity] == ["e-2", "e-1"]
    assert on_a == await b_stub.GetProfile(PROFILE, timeout=5)
    fresh_stub, _, _ = await replica(read_cache_max_entries=0)
    assert on_a == await fresh_stub.GetProfile(PROFILE, timeout=5)  # exactly what the database gives

    await until(lambda: c_cache.held_version("c-1") == 0, seconds=5)  # C dropped it
    assert await c_stub.GetProfile(PROFILE, timeout=5) == on_a


@postgres_only
async def test_a_state_larger_than_a_notify_payload_is_shared_compressed(replica):
    a_stub, a_app, _ = await replica(notify_saved_states=True)
    b_stub, _, _ = await replica(notify_saved_states=True)
    cache = cache_of(a_app)
    # 350 orders an hour apart: the state's JSON is over 8,000 bytes, PostgreSQL's limit for one payload.
    await ingest(b_stub, *(purchase(f"e-{i}", ago(hours=400 - i)) for i in range(350)))
    await read_twice(a_stub, cache)
    version, misses = cache.held_version("c-1"), cache.misses
    assert version
    await ingest(b_stub, purchase("e-last", ago(minutes=5)))
    await until(lambda: cache.held_version("c-1") == version + 1, seconds=5)
    on_a = await a_stub.GetProfile(PROFILE, timeout=5)
    assert cache.misses == misses and on_a.profile.traits.order_count == 351
    assert on_a == await b_stub.GetProfile(PROFILE, timeout=5)


# ---------------------------------------------------------------------------------------------- regressions


async def test_a_getfeatures_read_that_misses_counts_one_miss(replica):
    """A GetFeatures miss is counted once (it was counted twice, understating the hit ratio read_bench reports)."""
    stub, app, _ = await replica()
    cache = cache_of(app)
    await ingest(stub, purchase("e-1", ago(days=2)))
    misses = cache.misses
    await stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1"), timeout=5)
    assert cache.misses == misses + 1, f"one GetFeatures miss counted {cache.misses - misses} misses"


@postgres_only
async def test_a_customer_id_with_a_line_break_is_dropped_from_other_replicas_caches(replica):
    """Any customer id survives the NOTIFY payload (JSON): one with a line break once reached other replicas as two
    ids, so their caches kept serving its old profile and the decision's stream never named it."""
    a_stub, a_app, a_port = await replica()
    b_stub, _, _ = await replica()
    odd = "c\n1"
    request = pb.GetProfileRequest(customer_id=odd)
    await ingest(b_stub, event("e-1", customer_id=odd, when=ago(days=2), purchase=buy((1, 20.0, 20.0))))
    await a_stub.GetProfile(request, timeout=5)
    await a_stub.GetProfile(request, timeout=5)  # cached on A
    watcher = await ChangeWatcher(a_port).subscribed()
    try:
        await ingest(
            b_stub,
            event("e-2", customer_id=odd, when=ago(days=1), purchase=buy((1, 20.0, 20.0))),
            event("e-3", customer_id="c-2", when=ago(days=1), purchase=buy((1, 20.0, 20.0))),
        )
        await until(lambda: "c-2" in watcher.changed(), seconds=5)  # B's NOTIFY (one for the transaction) arrived
        assert (await b_stub.GetProfile(request, timeout=5)).profile.traits.order_count == 2
        assert (await a_stub.GetProfile(request, timeout=5)).profile.traits.order_count == 2, "A served a stale profile"
        assert odd in watcher.changed(), f"the stream named {sorted(watcher.changed())}"
    finally:
        await watcher.close()


@postgres_only
async def test_an_ingest_whose_announced_ids_exceed_8000_bytes_but_not_7000_characters_is_applied(replica
):
    """NOTIFY payloads are split by encoded bytes (PostgreSQL's limit is 8,000 bytes): split by characters,
    non-ASCII ids made the pg_notify, hence the whole ingest transaction, fail."""
    stub, _, _ = await replica(ingest_lanes=1)  # one transaction for the batch (several lanes: one per lane)
    customers = [f"{n:03d}-" + "é" * 100 for n in range(60)]  # 104 characters, 204 bytes each
    answer = await ingest(
        stub,
        *(event(f"e-{n}", customer_id=c, when=ago(days=1), purchase=buy((1, 5.0, 5.0))) for n, c in enumerate(customers)),
    )
    assert answer.accepted == len(customers)
