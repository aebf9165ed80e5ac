"""The inventory service end to end over gRPC, on real SQLite and PostgreSQL, seeded by the stock importer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from nextbest.inventory.v1 import inventory_service_pb2 as pb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as pb_grpc

from libs.settings import CommonSettings
from services.inventory.app import build
from services.inventory.importer import import_stock_csv
from services.inventory.settings import InventorySettings

pytestmark = pytest.mark.integration

STOCK_CSV = """sku,product_id,size,colour,location_id,location_kind,on_hand
TEE-S-RED,TEE,S,red,store-1,store,4
TEE-M-RED,TEE,M,red,store-1,store,0
TEE-S-RED,TEE,S,red,dc-1,warehouse,100
TEE-M-RED,TEE,M,red,dc-1,warehouse,12
CAP-1,CAP,,navy,dc-1,warehouse,7
"""


def inventory_settings(database_url: str, tmp_path: Path, **overrides: object) -> InventorySettings:
    return InventorySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path), **overrides)


def write_stock(tmp_path: Path, text: str = STOCK_CSV, name: str = "stock.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
async def stub(database_url, tmp_path, serve) -> pb_grpc.InventoryServiceStub:
    settings = inventory_settings(database_url, tmp_path, max_items=3)
    await import_stock_csv(settings, write_stock(tmp_path))
    _, channel = await serve(build(settings))
    return pb_grpc.InventoryServiceStub(channel)


def pairs(availability) -> list[tuple[str, str, int]]:
    return [(a.sku, a.location_id, a.on_hand) for a in availability]


async def check(stub, skus=(), product_ids=(), location_ids=()) -> pb.CheckAvailabilityResponse:
    request = pb.CheckAvailabilityRequest(skus=skus, product_ids=product_ids, location_ids=location_ids)
    return await stub.CheckAvailability(request, timeout=10)


async def update(stub, update_id: str, *changes: pb.StockChange) -> pb.UpdateStockResponse:
    return await stub.UpdateStock(pb.UpdateStockRequest(update_id=update_id, changes=changes), timeout=10)


async def on_hand(stub, sku: str, location_id: str) -> int:
    (availability,) = (await check(stub, skus=[sku], location_ids=[location_id])).availability
    return availability.on_hand


async def expect_error(call, code: grpc.StatusCode, field: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code
    assert error.value.details().startswith(field + ":"), error.value.details()
    return error.value.details()


# --- CheckAvailability ------------------------------------------------------------------------------------------


async def test_by_sku_at_every_location(stub):
    reply = await check(stub, skus=["TEE-S-RED"])
    assert pairs(reply.availability) == [("TEE-S-RED", "dc-1", 100), ("TEE-S-RED", "store-1", 4)]
    dc, store = reply.availability
    assert (dc.product_id, dc.size, dc.colour) == ("TEE", "S", "red")
    assert (dc.location_kind, store.location_kind) == (pb.LOCATION_KIND_WAREHOUSE, pb.LOCATION_KIND_STORE)
    assert dc.HasField("updated_at") and dc.updated_at.seconds > 0
    assert list(reply.unknown) == []


async def test_by_product_at_one_location(stub):
    reply = await check(stub, product_ids=["TEE"], location_ids=["store-1"])
    assert pairs(reply.availability) == [("TEE-M-RED", "store-1", 0), ("TEE-S-RED", "store-1", 4)]


async def test_a_variant_without_a_stock_row_at_a_location_has_zero_on_hand(stub):
    reply = await check(stub, skus=["CAP-1"])
    assert pairs(reply.availability) == [("CAP-1", "dc-1", 7), ("CAP-1", "store-1", 0)]
    assert not reply.availability[1].HasField("updated_at")
    assert reply.availability[1].colour == "navy" and reply.availability[1].size == ""


async def test_unknown_skus_and_products_are_listed(stub):
    reply = await check(stub, skus=["TEE-S-RED", "NOPE"], product_ids=["GHOST", "CAP"], location_ids=["dc-1"])
    assert pairs(reply.availability) == [("CAP-1", "dc-1", 7), ("TEE-S-RED", "dc-1", 100)]
    assert list(reply.unknown) == ["NOPE", "GHOST"]
    only_unknown = await check(stub, skus=["NOPE"])
    assert (list(only_unknown.availability), list(only_unknown.unknown)) == ([], ["NOPE"])


async def test_an_unknown_location_is_not_found(stub):
    details = await expect_error(
        check(stub, skus=["TEE-S-RED"], location_ids=["store-1", "atlantis"]),
        grpc.StatusCode.NOT_FOUND,
        "location_ids[1]",
    )
    assert "atlantis" in details
    # Also when no requested variant exists, so nothing could have been paired with the location.
    unknown_only = check(stub, skus=["NOPE"], location_ids=["atlantis"])
    await expect_error(unknown_only, grpc.StatusCode.NOT_FOUND, "location_ids[0]")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({}, "skus"),
        ({"location_ids": ["store-1"]}, "skus"),
        ({"skus": ["a", "b", "c", "d"]}, "skus"),
        ({"product_ids": ["a", "b", "c", "d"]}, "product_ids"),
        ({"skus": ["TEE-S-RED", ""]}, "skus[1]"),
        ({"product_ids": [""]}, "product_ids[0]"),
        ({"skus": ["TEE-S-RED"], "location_ids": ["store-1", ""]}, "location_ids[1]"),
    ],
)
async def test_bad_lookups_are_invalid_argument(stub, request_fields, field):
    await expect_error(check(stub, **request_fields), grpc.StatusCode.INVALID_ARGUMENT, field)


# --- UpdateStock ------------------------------------------------------------------------------------------------


async def test_set_and_adjust_return_the_changed_pairs(stub):
    reply = await update(
        stub,
        "count-1",
        pb.StockChange(sku="TEE-S-RED", location_id="store-1", set_on_hand=9),
        pb.StockChange(sku="CAP-1", location_id="store-1", adjust_by=5),  # no stock row yet: starts from 0
        pb.StockChange(sku="TEE-M-RED", location_id="dc-1", adjust_by=-2),
    )
    assert not reply.duplicate
    assert pairs(reply.availability) == [
        ("TEE-S-RED", "store-1", 9),
        ("CAP-1", "store-1", 5),
        ("TEE-M-RED", "dc-1", 10),
    ]
    assert all(a.HasField("updated_at") for a in reply.availability)
    after = await check(stub, product_ids=["TEE", "CAP"])
    assert pairs(after.availability) == [
        ("CAP-1", "dc-1", 7),
        ("CAP-1", "store-1", 5),
        ("TEE-M-RED", "dc-1", 10),
        ("TEE-M-RED", "store-1", 0),
        ("TEE-S-RED", "dc-1", 100),
        ("TEE-S-RED", "store-1", 9),
    ]


async def test_an_adjustment_below_zero_clamps_at_zero(stub):
    reply = await update(stub, "sale-1", pb.StockChange(sku="TEE-S-RED", location_id="store-1", adjust_by=-10))
    assert pairs(reply.availability) == [("TEE-S-RED", "store-1", 0)]
    reply = await update(stub, "sale-2", pb.StockChange(sku="TEE-S-RED", location_id="store-1", adjust_by=3))
    assert pairs(reply.availability) == [("TEE-S-RED", "store-1", 3)]


async def test_a_repeated_update_id_is_a_duplicate_and_changes_nothing(stub):
    change = pb.StockChange(sku="TEE-S-RED", location_id="dc-1", adjust_by=-1)
    first = await update(stub, "sale-1", change)
    again = await update(stub, "sale-1", change)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert pairs(again.availability) == [("TEE-S-RED", "dc-1", 99)]
    assert again.availability[0].updated_at == first.availability[0].updated_at
    assert await on_hand(stub, "TEE-S-RED", "dc-1") == 99


async def test_concurrent_adjustments_lose_no_update(stub):
    change = pb.StockChange(sku="TEE-S-RED", location_id="dc-1", adjust_by=-1)
    replies = await asyncio.gather(*(update(stub, f"sale-{i}", change) for i in range(20)))
    assert not any(reply.duplicate for reply in replies)
    assert await on_hand(stub, "TEE-S-RED", "dc-1") == 80


async def test_concurrent_retries_of_one_update_apply_it_once(stub):
    change = pb.StockChange(sku="TEE-M-RED", location_id="dc-1", adjust_by=-5)
    replies = await asyncio.gather(*(update(stub, "sale-once", change) for _ in range(10)))
    assert sorted(reply.duplicate for reply in replies) == [False] + [True] * 9
    assert await on_hand(stub, "TEE-M-RED", "dc-1") == 7


@pytest.mark.parametrize(
    ("bad", "field", "name"),
    [
        (pb.StockChange(sku="GHOST", location_id="dc-1", adjust_by=1), "changes[1].sku", "GHOST"),
        (pb.StockChange(sku="CAP-1", location_id="atlantis", set_on_hand=1), "changes[1].location_id", "atlantis"),
    ],
)
async def test_one_unknown_change_applies_none(stub, bad, field, name):
    good = pb.StockChange(sku="TEE-S-RED", location_id="store-1", set_on_hand=50)
    details = await expect_error(update(stub, "count-1", good, bad), grpc.StatusCode.NOT_FOUND, field)
    assert name in details
    assert await on_hand(stub, "TEE-S-RED", "store-1") == 4
    # The update id was not consumed: the corrected update is applied, not reported as a duplicate.
    retry = await update(stub, "count-1", good)
    assert not retry.duplicate and pairs(retry.availability) == [("TEE-S-RED", "store-1", 50)]


@pytest.mark.parametrize(
    ("update_id", "changes", "field"),
    [
        ("", [pb.StockChange(sku="TEE-S-RED", location_id="dc-1", adjust_by=1)], "update_id"),
        ("u", [], "changes"),
        ("u", [pb.StockChange(sku="TEE-S-RED", location_id="dc-1", adjust_by=1)] * 4, "changes"),
        ("u", [pb.StockChange(location_id="dc-1", adjust_by=1)], "changes[0].sku"),
        ("u", [pb.StockChange(sku="TEE-S-RED", adjust_by=1)], "changes[0].location_id"),
        ("u", [pb.StockChange(sku="TEE-S-RED", location_id="dc-1")], "changes[0].change"),
        (
            "u",
            [
                pb.StockChange(sku="TEE-S-RED", location_id="dc-1", adjust_by=1),
                pb.StockChange(sku="TEE-S-RED", location_id="dc-1", set_on_hand=-1),
            ],
            "changes[1].set_on_hand",
        ),
    ],
)
async def test_bad_updates_are_invalid_argument_and_change_nothing(stub, update_id, changes, field):
    await expect_error(update(stub, update_id, *changes), grpc.StatusCode.INVALID_ARGUMENT, field)
    assert await on_hand(stub, "TEE-S-RED", "dc-1") == 100
