"""Stock import on real SQLite and PostgreSQL: counts, idempotence, all-or-nothing, `nextbest inventory import`."""

from __future__ import annotations

import argparse

import grpc
import pytest
from nextbest.inventory.v1 import inventory_service_pb2 as pb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as pb_grpc

from cli import inventory as inventory_cli
from services.inventory.app import build
from services.inventory.importer import ImportReport, StockFileError, import_stock_csv
from tests.integration.test_inventory_service import STOCK_CSV, inventory_settings, pairs, write_stock

pytestmark = pytest.mark.integration

EVERYTHING = pb.CheckAvailabilityRequest(product_ids=["TEE", "CAP"])


async def test_import_reports_counts_and_reimporting_changes_nothing(database_url, tmp_path, serve):
    settings = inventory_settings(database_url, tmp_path)
    path = write_stock(tmp_path)
    assert await import_stock_csv(settings, path) == ImportReport(locations=2, variants=3, stock_rows=5)
    _, channel = await serve(build(settings))
    stub = pb_grpc.InventoryServiceStub(channel)
    before = await stub.CheckAvailability(EVERYTHING, timeout=10)

    assert await import_stock_csv(settings, path) == ImportReport(locations=2, variants=3, stock_rows=5)
    assert await stub.CheckAvailability(EVERYTHING, timeout=10) == before  # quantities and updated_at alike

    # A changed file changes exactly what differs.
    changed = STOCK_CSV.replace("CAP-1,CAP,,navy,dc-1,warehouse,7", "CAP-1,CAP,OS,navy,dc-1,warehouse,6")
    await import_stock_csv(settings, write_stock(tmp_path, changed, "changed.csv"))
    after = await stub.CheckAvailability(EVERYTHING, timeout=10)
    changed_rows = [
        (a.sku, a.location_id) for a, b in zip(after.availability, before.availability, strict=True) if a != b
    ]
    assert changed_rows == [("CAP-1", "dc-1"), ("CAP-1", "store-1")]  # new size on both; new quantity at dc-1
    cap_dc, cap_store = after.availability[0], after.availability[1]
    assert (cap_dc.on_hand, cap_dc.size, cap_store.size) == (6, "OS", "OS")
    assert cap_dc.updated_at.ToDatetime() > before.availability[0].updated_at.ToDatetime()


async def test_a_malformed_file_writes_nothing(database_url, tmp_path, serve):
    settings = inventory_settings(database_url, tmp_path)
    await import_stock_csv(settings, write_stock(tmp_path))
    bad = (
        "sku,product_id,size,colour,location_id,location_kind,on_hand\n"
        "TEE-S-RED,TEE,S,red,store-1,store,999\n"  # valid, and would change stock
        "NEW-1,NEW,,,store-9,store,5\n"  # valid, and would add a variant and a location
        "TEE-M-RED,TEE,M,red,store-1,store,lots\n"
    )
    with pytest.raises(StockFileError) as error:
        await import_stock_csv(settings, write_stock(tmp_path, bad, "bad.csv"))
    assert error.value.problems == ["line 4, column on_hand: not a whole number: 'lots'"]

    _, channel = await serve(build(settings))
    stub = pb_grpc.InventoryServiceStub(channel)
    reply = await stub.CheckAvailability(
        pb.CheckAvailabilityRequest(skus=["TEE-S-RED", "NEW-1"], location_ids=["store-1"]), timeout=10
    )
    assert pairs(reply.availability) == [("TEE-S-RED", "store-1", 4)]
    assert list(reply.unknown) == ["NEW-1"]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.CheckAvailability(
            pb.CheckAvailabilityRequest(skus=["TEE-S-RED"], location_ids=["store-9"]), timeout=10
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nextbest")
    inventory_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def test_cli_imports_a_file_and_reports_a_bad_one(database_url, tmp_path, serve, monkeypatch, capsys):
    monkeypatch.setenv("NEXTBEST_INVENTORY_DATABASE_URL", database_url)
    path = tmp_path / "stock.csv"
    path.write_bytes(b"\xef\xbb\xbf" + STOCK_CSV.encode())  # spreadsheets often save a byte-order mark
    args = _cli(["inventory", "import", str(path)])
    assert await args.func(args) == 0
    assert capsys.readouterr().out.strip() == f"imported {path}: 2 locations, 3 variants, 5 stock rows"

    _, channel = await serve(build(inventory_settings(database_url, tmp_path)))
    stub = pb_grpc.InventoryServiceStub(channel)
    reply = await stub.CheckAvailability(pb.CheckAvailabilityRequest(skus=["CAP-1"]), timeout=10)
    assert pairs(reply.availability) == [("CAP-1", "dc-1", 7), ("CAP-1", "store-1", 0)]

    bad = write_stock(tmp_path, STOCK_CSV + "CAP-2,CAP,,,dc-1,depot,1\n", "bad.csv")
    args = _cli(["inventory", "import", str(bad)])
    assert await args.func(args) == 1
    err = capsys.readouterr().err
    assert "line 7, column location_kind: must be one of store, warehouse, got 'depot'" in err
    assert "Traceback" not in err

    args = _cli(["inventory", "import", str(tmp_path / "missing.csv")])
    assert await args.func(args) == 1
    assert "missing.csv" in capsys.readouterr().err
