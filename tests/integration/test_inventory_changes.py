"""Inventory's change feed and the decision's stock cache, against the REAL inventory on SQLite and PostgreSQL.

`WatchChanges` names the products whose stock a commit changed (never a rolled-back or duplicate update); on
PostgreSQL a change committed by another replica, or by a stock import in another process, reaches the stream too,
and a lost LISTEN connection ends the stream (readers must drop what they cached). The decision serves repeat stock
look-ups from its cache and sees a committed stock change on its next decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as dpb
from nextbest.decision.v1 import decision_service_pb2_grpc as decision_grpc
from nextbest.identity.v1 import identity_service_pb2_grpc as identity_grpc
from nextbest.inventory.v1 import inventory_service_pb2 as pb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as pb_grpc
from nextbest.profile.v1 import profile_service_pb2_grpc as profile_grpc
from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc
from sqlalchemy import make_url

from libs.server import Registration, ServiceApp
from libs.settings import CommonSettings
from services.decision.app import build as build_decision
from services.decision.settings import DecisionSettings
from services.inventory.app import build
from services.inventory.importer import import_stock_csv
from services.inventory.settings import InventorySettings
from tests.integration.decision_fakes import (
    LOCATIONS,
    PRODUCTS,
    STOCK,
    WEB,
    FakeIdentity,
    FakeProfile,
    FakeScoring,
    write_catalogue,
)
from tests.integration.polling import until

pytestmark = pytest.mark.integration

STOCK_CSV = """sku,product_id,size,colour,location_id,location_kind,on_hand
TEE-S-RED,TEE,S,red,store-1,store,4
TEE-S-RED,TEE,S,red,dc-1,warehouse,100
CAP-1,CAP,,navy,dc-1,warehouse,7
"""


def settings_for(database_url: str, tmp_path) -> InventorySettings:
    return InventorySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path))


class Watcher:
    """Reads one WatchChanges stream in the background: `messages` holds what arrived, `ended` when it ended."""

    def __init__(self, stub: pb_grpc.InventoryServiceStub) -> None:
        self.messages: list[list[str]] = []
        self.ended = asyncio.Event()
        self._call = stub.WatchChanges(pb.WatchChangesRequest())
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self._call:
                self.messages.append(list(message.product_ids))
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        self.ended.set()

    async def subscribed(self) -> Watcher:
        await until(lambda: bool(self.messages))
        assert self.messages[0] == []
        return self

    def changed(self) -> list[str]:
        return [product for message in self.messages[1:] for product in message]

    async def close(self) -> None:
        self._call.cancel()
        await self._task


async def update(stub, update_id: str, sku: str, location_id: str, units: int) -> pb.UpdateStockResponse:
    change = pb.StockChange(sku=sku, location_id=location_id, set_on_hand=units)
    return await stub.UpdateStock(pb.UpdateStockRequest(update_id=update_id, changes=[change]), timeout=10)


@pytest.fixture
async def inventory(database_url, tmp_path, serve) -> AsyncIterator[pb_grpc.InventoryServiceStub]:
    settings = settings_for(database_url, tmp_path)
    (tmp_path / "stock.csv").write_text(STOCK_CSV)
    await import_stock_csv(settings, tmp_path / "stock.csv")
    _, channel = await serve(build(settings))
    yield pb_grpc.InventoryServiceStub(channel)


async def test_a_committed_update_names_its_products_once_and_a_duplicate_or_failed_one_nothing(inventory):
    watcher = await Watcher(inventory).subscribed()
    await update(inventory, "u1", "TEE-S-RED", "store-1", 3)
    await until(lambda: watcher.changed() == ["TEE"])
    await update(inventory, "u1", "TEE-S-RED", "store-1", 3)  # duplicate: nothing changes
    with pytest.raises(grpc.aio.AioRpcError) as failed:  # an unknown SKU rolls the whole update back
        await inventory.UpdateStock(
            pb.UpdateStockRequest(
                update_id="u2",
                changes=[
                    pb.StockChange(sku="TEE-S-RED", location_id="dc-1", adjust_by=-1),
                    pb.StockChange(sku="NOPE", location_id="dc-1", adjust_by=-1),
                ],
            ),
            timeout=10,
        )
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    await update(inventory, "u3", "CAP-1", "dc-1", 6)
    await until(lambda: "CAP" in watcher.changed())
    assert watcher.changed() == ["TEE", "CAP"]
    await watcher.close()


@pytest.mark.postgres
async def test_changes_by_another_replica_or_an_import_reach_every_replica(postgres_url, tmp_path, serve):
    settings = settings_for(postgres_url, tmp_path)
    (tmp_path / "stock.csv").write_text(STOCK_CSV)
    await import_stock_csv(settings, tmp_path / "stock.csv")
    replicas = []
    for _ in range(2):
        _, channel = await serve(build(settings))
        replicas.append(pb_grpc.InventoryServiceStub(channel))
    watcher = await Watcher(replicas[1]).subscribed()
    await update(replicas[0], "u1", "CAP-1", "dc-1", 1)
    await until(lambda: watcher.changed() == ["CAP"])
    (tmp_path / "more.csv").write_text(
        "sku,product_id,size,colour,location_id,location_kind,on_hand\nSOCK-1,SOCK,,,dc-1,warehouse,9\n"
    )
    await import_stock_csv(settings, tmp_path / "more.csv")  # its own engine, as `nextbest inventory import` does
    await until(lambda: "SOCK" in watcher.changed())
    await watcher.close()


@pytest.mark.postgres
async def test_a_lost_listen_connection_ends_the_stream_and_listening_resumes(postgres_url, tmp_path, serve):
    settings = settings_for(postgres_url, tmp_path)
    (tmp_path / "stock.csv").write_text(STOCK_CSV)
    await import_stock_csv(settings, tmp_path / "stock.csv")
    app = build(settings)
    _, channel = await serve(app)
    stub = pb_grpc.InventoryServiceStub(channel)
    watcher = await Watcher(stub).subscribed()
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' "
            "AND datname = current_database()"
        )
    finally:
        await admin.close()
    assert killed == 1
    await asyncio.wait_for(watcher.ended.wait(), 15)  # changes may be missed now: readers must reset
    relay = app.parts["relay"]
    await asyncio.wait_for(relay.listening.wait(), 15)
    again = await Watcher(stub).subscribed()
    await update(stub, "u1", "TEE-S-RED", "dc-1", 50)
    await until(lambda: again.changed() == ["TEE"])
    await again.close()


def fake_stock_csv() -> str:
    kinds = {value: name for name, value in pb.LocationKind.items()}
    lines = ["sku,product_id,size,colour,location_id,location_kind,on_hand"]
    for product in PRODUCTS:
        for variant in product["variants"]:
            for location, kind in LOCATIONS.items():
                units = STOCK.get((variant["sku"], location), 0)
                kind_name = kinds[kind].removeprefix("LOCATION_KIND_").lower()
                lines.append(
                    f"{variant['sku']},{product['product_id']},{variant['size']},{variant['colour']},"
                    f"{location},{kind_name},{units}"
                )
    return "\n".join(lines) + "\n"


async def test_the_decision_caches_stock_and_sees_a_committed_change_on_its_next_decision(
    database_url, tmp_path, serve
):
    settings = settings_for(database_url, tmp_path)
    (tmp_path / "stock.csv").write_text(fake_stock_csv())
    await import_stock_csv(settings, tmp_path / "stock.csv")
    inventory_server, inventory_channel = await serve(build(settings))
    inventory = pb_grpc.InventoryServiceStub(inventory_channel)
    targets = {"inventory_target": f"127.0.0.1:{inventory_server.port}"}
    for name, fake, add in (
        ("identity", FakeIdentity(), identity_grpc.add_IdentityServiceServicer_to_server),
        ("profile", FakeProfile(), profile_grpc.add_ProfileServiceServicer_to_server),
        ("scoring", FakeScoring(), scoring_grpc.add_ScoringServiceServicer_to_server),
    ):
        server, _ = await serve(ServiceApp(f"fake-{name}", [Registration(add, fake, f"nextbest.{name}.v1.x")]))
        targets[f"{name}_target"] = f"127.0.0.1:{server.port}"
    app = build_decision(
        DecisionSettings(
            database_url=database_url,
            port=0,
            common=CommonSettings(data_dir=tmp_path),
            catalogue_dir=write_catalogue(tmp_path / "catalogue"),
            budget_web_ms=2000,
            **targets,
        )
    )
    _, decision_channel = await serve(app)
    decision = decision_grpc.DecisionServiceStub(decision_channel)
    feed = next(s for s in app.parts["subscriptions"] if s.name == "inventory")
    await asyncio.wait_for(feed.subscribed.wait(), 5)
    cache = app.parts["service"].stock.cache
    request = dpb.DecideRequest(channel=WEB, customer=common_pb2.CustomerRef(customer_id="c-ann"), max_offers=10)

    first = await decision.Decide(request, timeout=5)
    assert "sneaker-discount" in {o.offer_id for o in first.offers}
    misses = cache.stats.misses
    await decision.Decide(request, timeout=5)
    assert cache.stats.misses == misses and cache.stats.hits > 0  # the second decision did not ask inventory

    for index, sku in enumerate(("SNK-41-WHT", "SNK-42-WHT")):  # sell out the sneakers at the warehouse
        await update(inventory, f"sold-{index}", sku, "DC1", 0)
    await until(lambda: not any(key[1] == "P-SNEAK" for key in cache._entries))
    after = await decision.Decide(request, timeout=5)
    assert "sneaker-discount" not in {o.offer_id for o in after.offers}
    assert "sneaker-preorder" in {o.offer_id for o in after.offers}
