"""Authentication, scopes, audit, rate limits and load shedding, enforced by real servers on port 0.

Real inventory, profile and identity services (SQLite: the checks happen before any storage is touched) and the
real decision service against the fakes of decision_fakes.py; clients send their API key as gRPC metadata.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as decision_pb
from nextbest.decision.v1 import decision_service_pb2_grpc as decision_grpc
from nextbest.identity.v1 import identity_service_pb2 as identity_pb
from nextbest.identity.v1 import identity_service_pb2_grpc as identity_grpc
from nextbest.inventory.v1 import inventory_service_pb2 as inventory_pb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from nextbest.profile.v1 import profile_service_pb2 as profile_pb
from nextbest.profile.v1 import profile_service_pb2_grpc as profile_grpc
from pydantic import SecretStr

from libs.auth.keystore import Keystore
from libs.auth.server import KeystoreWatcher
from libs.server import GrpcServer, Registration, ServiceApp
from libs.settings import CommonSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.inventory.app import build as build_inventory
from services.inventory.importer import import_stock_csv
from services.inventory.settings import InventorySettings
from services.profile.app import build as build_profile
from services.profile.settings import ProfileSettings
from tests.integration.decision_fakes import EMAIL, start_mesh

pytestmark = pytest.mark.integration

CLIENTS = {
    "ops": {"role": "operator"},
    "shop": {"role": "web"},
    "tills": {"role": "pos", "stores": ("S1", "S2")},
    "agents": {"role": "call_centre"},
    "mesh": {"role": "service"},
    "throttled": {"role": "operator", "rate_per_second": 1.0, "burst": 2},
}


class Keys:
    """The test keystore on disk and one issued key per client."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = Keystore()
        self.key: dict[str, str] = {}
        for name, fields in CLIENTS.items():
            self.store.add_client(name, **fields)
            self.key[name] = self.store.issue_key(name)[1]
        self.store.save(path)

    def watcher(self) -> KeystoreWatcher:
        return KeystoreWatcher(self.path, check_interval=0)  # re-stat on every call: rotation shows at once


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
def keys(tmp_path) -> Keys:
    return Keys(tmp_path / "keys.json")


@pytest.fixture
async def start() -> AsyncIterator:
    """Start ServiceApps on port 0 with the given GrpcServer options; a plain channel to each; all stopped after."""
    started: list[tuple[GrpcServer, grpc.aio.Channel]] = []

    async def run(app: ServiceApp, **options) -> tuple[GrpcServer, grpc.aio.Channel]:
        server = GrpcServer(app, "127.0.0.1", 0, grace=0.5, **options)
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return server, channel

    yield run
    for server, channel in reversed(started):
        await channel.close()
        await server.stop()


@pytest.fixture
async def inventory(start, keys, sqlite_url, tmp_path) -> inventory_grpc.InventoryServiceStub:
    settings = InventorySettings(database_url=sqlite_url, port=0, common=CommonSettings(data_dir=tmp_path))
    stock = tmp_path / "stock.csv"
    stock.write_text("sku,product_id,size,colour,location_id,location_kind,on_hand\nTEE-S-RED,TEE,S,red,store-1,store,4\n")
    await import_stock_csv(settings, stock)
    _, channel = await start(build_inventory(settings), keystore=keys.watcher())
    return inventory_grpc.InventoryServiceStub(channel)


def check_request() -> inventory_pb.CheckAvailabilityRequest:
    return inventory_pb.CheckAvailabilityRequest(skus=["TEE-S-RED"])


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code(), error.value.details()


async def test_missing_and_wrong_credentials_are_unauthenticated(inventory, keys):
    assert await status_of(inventory.CheckAvailability(check_request(), timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "missing credential: send metadata 'authorization: Bearer <API key>'"
    )
    wrong = keys.key["ops"][:-4] + "AAAA"
    assert await status_of(inventory.CheckAvailability(check_request(), metadata=bearer(wrong), timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "wrong API key secret"
    )
    unknown = await status_of(
        inventory.CheckAvailability(check_request(), metadata=bearer("nbk_0123456789ab_nope"), timeout=5)
    )
    assert unknown == (grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key")
    basic = (("authorization", f"Basic {keys.key['ops']}"),)
    code, _ = await status_of(inventory.CheckAvailability(check_request(), metadata=basic, timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_health_needs_no_credential(start, keys):
    _, channel = await start(ServiceApp("empty", []), keystore=keys.watcher())
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_scopes_per_role_on_the_inventory(inventory, keys):
    update = inventory_pb.UpdateStockRequest(
        update_id="u-1", changes=[inventory_pb.StockChange(sku="TEE-S-RED", location_id="store-1", set_on_hand=3)]
    )
    code, details = await status_of(inventory.UpdateStock(update, metadata=bearer(keys.key["mesh"]), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == (
        "/nextbest.inventory.v1.InventoryService/UpdateStock needs scope 'stock.write', which role 'service' "
        "does not have"
    )
    code, _ = await status_of(inventory.CheckAvailability(check_request(), metadata=bearer(keys.key["shop"]),
                                                          timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED

    # The operator may do both; the service role may read stock (decision → inventory).
    await inventory.UpdateStock(update, metadata=bearer(keys.key["ops"]), timeout=5)
    for client in ("ops", "mesh"):
        reply = await inventory.CheckAvailability(check_request(), metadata=bearer(keys.key[client]), timeout=5)
        assert [(a.sku, a.location_id, a.on_hand) for a in reply.availability] == [("TEE-S-RED", "store-1", 3)]


async def test_every_denial_is_audited_without_the_secret(inventory, keys, caplog):
    caplog.set_level(logging.INFO, logger="nextbest.audit")
    await status_of(inventory.CheckAvailability(check_request(), metadata=bearer(keys.key["shop"]), timeout=5))
    wrong = keys.key["tills"][:-4] + "AAAA"
    await status_of(inventory.CheckAvailability(check_request(), metadata=bearer(wrong), timeout=5))
    await inventory.CheckAvailability(check_request(), metadata=bearer(keys.key["ops"]), timeout=5)

    records = [r for r in caplog.records if r.name == "nextbest.audit"]
    assert [(r.client, r.key_id, r.status) for r in records] == [
        ("shop", keys.key["shop"].split("_")[1], "PERMISSION_DENIED"),
        (None, keys.key["tills"].split("_")[1], "UNAUTHENTICATED"),
    ]
    assert {r.method for r in records} == {"/nextbest.inventory.v1.InventoryService/CheckAvailability"}
    assert records[1].reason == "wrong API key secret" and records[0].peer.startswith("ipv4:127.0.0.1:")
    secrets = [key.split("_", 2)[2] for key in keys.key.values()] + [wrong.split("_", 2)[2]]
    logged = caplog.text + "".join(str(vars(r)) for r in records)
    assert not any(secret in logged for secret in secrets)


async def test_rotation_and_revocation_take_effect_while_serving(inventory, keys):
    keys.store.add_client("warehouse", "service")
    old_id, old = keys.store.issue_key("warehouse")
    keys.store.save(keys.path)
    assert await inventory.CheckAvailability(check_request(), metadata=bearer(old), timeout=5)

    _, new = keys.store.issue_key("warehouse")
    keys.store.save(keys.path)
    for key in (old, new):  # both valid during the roll-out of the new key
        assert await inventory.CheckAvailability(check_request(), metadata=bearer(key), timeout=5)

    keys.store.revoke_key(old_id)
    keys.store.save(keys.path)
    assert await status_of(inventory.CheckAvailability(check_request(), metadata=bearer(old), timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key"
    )
    assert await inventory.CheckAvailability(check_request(), metadata=bearer(new), timeout=5)


async def test_rate_limit_answers_resource_exhausted_with_retry_info(inventory, keys):
    metadata = bearer(keys.key["throttled"])
    for _ in range(2):  # the burst
        await inventory.CheckAvailability(check_request(), metadata=metadata, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await inventory.CheckAvailability(check_request(), metadata=metadata, timeout=5)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.details().startswith("rate limit of 1/s exceeded for client 'throttled'; retry in 0.")

    status = rpc_status.from_call(error.value)
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    delay = retry.retry_delay.ToTimedelta().total_seconds()
    assert 0 < delay <= 1.0
    trailers = dict(error.value.trailing_metadata())
    assert 0 < int(trailers["retry-after-ms"]) <= 1000
    # Another client is not slowed down by this one's limit.
    await inventory.CheckAvailability(check_request(), metadata=bearer(keys.key["ops"]), timeout=5)


# --- decision: channel and store scopes -------------------------------------------------------------------------


@pytest.fixture
async def decision(serve, start, keys, sqlite_url, tmp_path) -> decision_grpc.DecisionServiceStub:
    """The real decision service (with a keystore) in front of fake dependencies (without)."""

    async def serve_decision_with_auth(app: ServiceApp):
        if app.name == "decision":
            return await start(app, keystore=keys.watcher())
        return await serve(app)

    return (await start_mesh(serve_decision_with_auth, tmp_path, sqlite_url)).stub


def decide(channel: int, store: str = "") -> decision_pb.DecideRequest:
    return decision_pb.DecideRequest(
        channel=channel,
        customer=common_pb2.CustomerRef(identifiers=[common_pb2.Identifier(type=EMAIL, value="ann@example.com")]),
        context=decision_pb.DecisionContext(store_id=store),
    )


async def test_pos_client_decides_only_at_the_pos_in_its_own_stores(decision, keys):
    tills = bearer(keys.key["tills"])
    reply = await decision.Decide(decide(common_pb2.CHANNEL_POS, "S2"), metadata=tills, timeout=5)
    assert reply.customer_id == "c-ann"
    assert await status_of(decision.Decide(decide(common_pb2.CHANNEL_POS, "S9"), metadata=tills, timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED, "context.store_id: store S9 is not one of this client's stores"
    )
    assert await status_of(decision.Decide(decide(common_pb2.CHANNEL_WEB, "S1"), metadata=tills, timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED, "channel: role 'pos' may not decide for CHANNEL_WEB"
    )


async def test_web_and_call_centre_clients_are_bound_to_their_channel_and_operators_are_not(decision, keys):
    web = await decision.Decide(decide(common_pb2.CHANNEL_WEB), metadata=bearer(keys.key["shop"]), timeout=5)
    assert web.customer_id == "c-ann"
    code, _ = await status_of(decision.Decide(decide(common_pb2.CHANNEL_POS, "S1"),
                                              metadata=bearer(keys.key["shop"]), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = await status_of(decision.PrioritizeCall(decision_pb.PrioritizeCallRequest(),
                                                      metadata=bearer(keys.key["shop"]), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    call = await decision.Decide(decide(common_pb2.CHANNEL_CALL_CENTER), metadata=bearer(keys.key["agents"]),
                                 timeout=5)
    assert call.customer_id == "c-ann"
    for channel, store in ((common_pb2.CHANNEL_POS, "S7"), (common_pb2.CHANNEL_WEB, "")):
        reply = await decision.Decide(decide(channel, store), metadata=bearer(keys.key["ops"]), timeout=5)
        assert reply.customer_id == "c-ann"


# --- profile → identity, both authenticated -----------------------------------------------------------------------


async def test_peer_hop_profile_to_identity_uses_the_processes_own_key(start, keys, sqlite_url, tmp_path, caplog):
    common = CommonSettings(data_dir=tmp_path)
    identity_server, _ = await start(
        build_identity(IdentitySettings(database_url=sqlite_url, port=0, common=common)), keystore=keys.watcher()
    )
    async def profile_with_own_key(client: str) -> profile_grpc.ProfileServiceStub:
        # The profile process's own credential (NEXTBEST_AUTH_TOKEN): its channel to identity sends it on every call.
        profile_settings = ProfileSettings(
            database_url=sqlite_url, port=0, identity_target=f"127.0.0.1:{identity_server.port}",
            common=common.model_copy(update={"auth_token": SecretStr(keys.key[client])}),
        )
        _, channel = await start(build_profile(profile_settings), keystore=keys.watcher())
        return profile_grpc.ProfileServiceStub(channel)

    def ingest(event_id: str) -> profile_pb.IngestEventsRequest:
        event = profile_pb.Event(event_id=event_id, source="test", page_view=profile_pb.PageView(page="home"))
        event.occurred_at.GetCurrentTime()
        event.identifiers.append(common_pb2.Identifier(type=EMAIL, value="ann@example.com"))
        return profile_pb.IngestEventsRequest(events=[event])

    caplog.set_level(logging.INFO, logger="nextbest.audit")
    misconfigured = await profile_with_own_key("shop")  # a web key may not Resolve
    code, details = await status_of(misconfigured.IngestEvents(ingest("e-0"), metadata=bearer(keys.key["ops"]),
                                                               timeout=10))
    assert (code, details) == (
        grpc.StatusCode.UNAVAILABLE, "identity service could not resolve identifiers: PERMISSION_DENIED"
    )
    resolve = "/nextbest.identity.v1.IdentityService/Resolve"
    assert [(r.client, r.method) for r in caplog.records if r.name == "nextbest.audit" and r.method == resolve] == [
        ("shop", resolve)
    ]

    caplog.clear()
    profile = await profile_with_own_key("mesh")
    reply = await profile.IngestEvents(ingest("e-1"), metadata=bearer(keys.key["ops"]), timeout=10)
    assert (reply.accepted, list(reply.rejected)) == (1, [])
    assert [r for r in caplog.records if r.name == "nextbest.audit" and r.client == "mesh"] == []
    # The web frontend may not read profiles (PII).
    code, details = await status_of(profile.GetProfile(profile_pb.GetProfileRequest(customer_id="c-1"),
                                                       metadata=bearer(keys.key["shop"]), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "needs scope 'profiles.read'" in details


async def test_server_streams_are_guarded_too(start, keys, sqlite_url, tmp_path):
    settings = IdentitySettings(database_url=sqlite_url, port=0, common=CommonSettings(data_dir=tmp_path))
    _, channel = await start(build_identity(settings), keystore=keys.watcher())
    identity = identity_grpc.IdentityServiceStub(channel)
    code, _ = await status_of(identity.WatchChanges(identity_pb.WatchChangesRequest(), timeout=5).read())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await status_of(identity.WatchChanges(identity_pb.WatchChangesRequest(),
                                                    metadata=bearer(keys.key["shop"]), timeout=5).read())
    assert code == grpc.StatusCode.PERMISSION_DENIED

    # The service role may follow the change feed: "subscribed" (empty) first, then the customer changed after it.
    ops = bearer(keys.key["ops"])
    created = await identity.Resolve(
        identity_pb.ResolveRequest(
            identifiers=[common_pb2.Identifier(type=EMAIL, value="watch@example.com")], create_if_missing=True
        ),
        metadata=ops, timeout=5,
    )
    stream = identity.WatchChanges(identity_pb.WatchChangesRequest(), metadata=bearer(keys.key["mesh"]), timeout=10)
    assert list((await stream.read()).customer_ids) == []
    consent = identity_pb.Consent(purpose=identity_pb.CONSENT_PURPOSE_MARKETING, channel=common_pb2.CHANNEL_WEB,
                                  granted=True, source="test")
    await identity.SetConsent(identity_pb.SetConsentRequest(customer_id=created.customer_id, consents=[consent]),
                              metadata=ops, timeout=5)
    assert list((await stream.read()).customer_ids) == [created.customer_id]
    stream.cancel()


# --- load shedding and request size -------------------------------------------------------------------------------


class SlowInventory(inventory_grpc.InventoryServiceServicer):
    """Holds every CheckAvailability until released, so that calls pile up."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def CheckAvailability(self, request, context):
        self.entered.set()
        await self.release.wait()
        return inventory_pb.CheckAvailabilityResponse()


def slow_app(servicer: SlowInventory) -> ServiceApp:
    return ServiceApp("slow", [Registration(inventory_grpc.add_InventoryServiceServicer_to_server, servicer,
                                            "nextbest.inventory.v1.InventoryService")])


async def test_calls_beyond_the_concurrency_bound_are_shed_not_queued(start):
    servicer = SlowInventory()
    _, channel = await start(slow_app(servicer), max_concurrent_rpcs=1)
    stub = inventory_grpc.InventoryServiceStub(channel)
    first = asyncio.ensure_future(stub.CheckAvailability(check_request(), timeout=10))
    await asyncio.wait_for(servicer.entered.wait(), 5)

    code, _ = await status_of(stub.CheckAvailability(check_request(), timeout=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    servicer.release.set()
    assert await first == inventory_pb.CheckAvailabilityResponse()
    assert await stub.CheckAvailability(check_request(), timeout=5) == inventory_pb.CheckAvailabilityResponse()


async def test_an_oversize_request_is_refused_with_resource_exhausted(start):
    servicer = SlowInventory()
    servicer.release.set()
    _, channel = await start(slow_app(servicer), max_request_bytes=4096)
    stub = inventory_grpc.InventoryServiceStub(channel)
    big = inventory_pb.CheckAvailabilityRequest(skus=[f"SKU-{i:06d}" for i in range(1000)])
    code, details = await status_of(stub.CheckAvailability(big, timeout=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "4096" in details
    assert not servicer.entered.is_set()
    assert await stub.CheckAvailability(check_request(), timeout=5) == inventory_pb.CheckAvailabilityResponse()



async def test_the_cli_sends_the_processes_own_token(start, keys, sqlite_url, tmp_path, monkeypatch, capsys):
    from cli.main import build_parser

    settings = InventorySettings(database_url=sqlite_url, port=0, common=CommonSettings(data_dir=tmp_path))
    server, _ = await start(build_inventory(settings), keystore=keys.watcher())
    args = build_parser().parse_args(["availability", "--sku", "TEE-S-RED", "--target", f"127.0.0.1:{server.port}"])
    assert await args.func(args) == 1
    assert capsys.readouterr().err.startswith("UNAUTHENTICATED: missing credential")

    monkeypatch.setenv("NEXTBEST_AUTH_TOKEN", keys.key["ops"])
    assert await args.func(args) == 0
    assert "unknown: TEE-S-RED" in capsys.readouterr().out
