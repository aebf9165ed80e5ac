"""`nextbest inventory ...`: inventory tools. `import PATH` loads a stock CSV (onboarding, demo seeding)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from libs.settings import load_settings
from services.inventory.importer import StockFileError, import_stock_csv
from services.inventory.settings import InventorySettings


def register(subparsers: argparse._SubParsersAction) -> None:
    inventory = subparsers.add_parser("inventory", help="inventory tools")
    commands = inventory.add_subparsers(dest="inventory_command", required=True, metavar="COMMAND")
    importer = commands.add_parser(
        "import",
        help="import a stock CSV (sku,product_id,size,colour,location_id,location_kind,on_hand)",
        description="Validate the whole file, then upsert its locations, variants and stock into the inventory "
        "database (NEXTBEST_INVENTORY_DATABASE_URL, NEXTBEST_DATABASE_URL or NEXTBEST_DATA_DIR/inventory.db). "
        "Re-importing the same file changes nothing.",
    )
    importer.add_argument("path", type=Path, help="the stock CSV file")
    importer.set_defaults(func=_import)


async def _import(args: argparse.Namespace) -> int:
    settings = load_settings(InventorySettings)
    try:
        report = await import_stock_csv(settings, args.path)
    except (StockFileError, OSError) as exc:
        # A bad or unreadable file is the operator's to fix: say what is wrong, no traceback.
        print(f"nextbest inventory import: {exc}", file=sys.stderr)
        return 1
    print(
        f"imported {args.path}: {report.locations} locations, {report.variants} variants, "
        f"{report.stock_rows} stock rows"
    )
    return 0
