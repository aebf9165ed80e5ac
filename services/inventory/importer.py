"""Imports a stock file (CSV) into the inventory: onboarding a retailer and seeding the demo.

Header: `sku,product_id,size,colour,location_id,location_kind,on_hand` (columns in any order, no others);
`location_kind` is `store` or `warehouse`, `on_hand` a whole number >= 0, `size` and `colour` may be empty.
The whole file is validated before anything is written, and every problem is reported with its line and column.
Importing sets on_hand of each listed (sku, location) to the file's quantity; stock rows not in the file are left
as they are. A new location is named after its id. Re-importing the same file changes nothing (not even updated_at).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from libs.db import create_engine
from services.inventory.domain import LOCATION_KINDS, LocationKind, StockSnapshot, Variant
from services.inventory.settings import InventorySettings
from services.inventory.storage import SqlInventoryStore, migrate_schema

COLUMNS = ("sku", "product_id", "size", "colour", "location_id", "location_kind", "on_hand")
REQUIRED = ("sku", "product_id", "location_id")
#: Problems listed in one error message; the count says how many more there were.
MAX_REPORTED = 20
_WHOLE_NUMBER = re.compile(r"-?[0-9]+")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ImportReport:
    """How many distinct locations, variants and (variant, location) stock rows the file held."""

    locations: int
    variants: int
    stock_rows: int


class StockFileError(ValueError):
    """A malformed stock file; `problems` holds every one as 'line N, column C: reason'."""

    def __init__(self, source: str, problems: list[str]) -> None:
        shown = problems[:MAX_REPORTED]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(
            f"{source}: {len(problems)} problem(s), nothing imported:\n  " + "\n  ".join(shown) + more
        )
        self.problems = problems


def _check_header(header: list[str]) -> list[str]:
    problems = [f"line 1, column {name}: missing from the header" for name in COLUMNS if name not in header]
    problems += [f"line 1, column {name}: not a stock file column" for name in header if name not in COLUMNS]
    repeated = [name for name in dict.fromkeys(header) if header.count(name) > 1]
    problems += [f"line 1, column {name}: appears more than once" for name in repeated]
    return problems


def _quantity(cell: str) -> tuple[int | None, str | None]:
    """The on_hand value, or the reason it is not one."""
    if not _WHOLE_NUMBER.fullmatch(cell):
        return None, f"not a whole number: {cell!r}"
    value = int(cell)
    if value < 0:
        return None, f"must be >= 0, got {value}"
    if value > _INT64_MAX:
        return None, f"too large: {value}"
    return value, None


def parse_stock_csv(lines: Iterable[str], source: str = "stock file") -> StockSnapshot:
    """Validate a whole stock file and return its content; raises StockFileError listing every problem."""
    reader = csv.reader(lines)
    header = [name.strip() for name in next(reader, [])]
    if not header:
        raise StockFileError(source, [f"line 1: empty, expected the header {','.join(COLUMNS)}"])
    if header_problems := _check_header(header):
        raise StockFileError(source, header_problems)
    position = {name: header.index(name) for name in COLUMNS}

    problems: list[str] = []

    locations: dict[str, tuple[LocationKind, int]] = {}
    variants: dict[str, tuple[Variant, int]] = {}
    on_hand: dict[tuple[str, str], tuple[int, int]] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue  # blank lines are harmless
        if len(row) != len(header):
            problems.append(f"line {line}: expected {len(header)} fields, got {len(row)}")
            continue
        cell = {name: row[index].strip() for name, index in position.items()}
        row_problems = [f"line {line}, column {name}: required" for name in REQUIRED if not cell[name]]
        if cell["location_kind"] not in LOCATION_KINDS:
            row_problems.append(
                f"line {line}, column location_kind: must be one of {', '.join(LOCATION_KINDS)}, "
                f"got {cell['location_kind']!r}"
            )
        quantity, reason = _quantity(cell["on_hand"])
        if reason:
            row_problems.append(f"line {line}, column on_hand: {reason}")
        if row_problems:
            problems += row_problems
            continue

        sku, location_id = cell["sku"], cell["location_id"]
        kind = cast(LocationKind, cell["location_kind"])
        variant = Variant(sku, cell["product_id"], cell["size"], cell["colour"])
        known_kind, kind_line = locations.setdefault(location_id, (kind, line))
        if known_kind != kind:
            problems.append(
                f"line {line}, column location_kind: location {location_id!r} is a {known_kind} on line {kind_line}"
            )
        known_variant, variant_line = variants.setdefault(sku, (variant, line))
        for name in ("product_id", "size", "colour"):
            if getattr(known_variant, name) != getattr(variant, name):
                problems.append(
                    f"line {line}, column {name}: sku {sku!r} has {name} {getattr(known_variant, name)!r} "
                    f"on line {variant_line}"
                )
        _, stock_line = on_hand.setdefault((sku, location_id), (cast(int, quantity), line))
        if stock_line != line:
            problems.append(
                f"line {line}, column location_id: sku {sku!r} at {location_id!r} is already on line {stock_line}"
            )
    if problems:
        raise StockFileError(source, problems)
    return StockSnapshot(
        locations={location_id: kind for location_id, (kind, _) in locations.items()},
        variants={sku: variant for sku, (variant, _) in variants.items()},
        on_hand={pair: quantity for pair, (quantity, _) in on_hand.items()},
    )


def read_stock_csv(path: Path) -> StockSnapshot:
    """Parse a stock file from disk (UTF-8, with or without a byte-order mark)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StockFileError(str(path), [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    return parse_stock_csv(io.StringIO(text, newline=""), source=str(path))


async def import_stock_csv(settings: InventorySettings, path: Path) -> ImportReport:
    """Validate the file, migrate the inventory tables, then upsert the file's content in one transaction."""
    snapshot = read_stock_csv(path)
    engine = create_engine(settings.resolved_database_url)
    try:
        await migrate_schema(engine)
        await SqlInventoryStore(engine).import_snapshot(snapshot, datetime.now(UTC))
    finally:
        await engine.dispose()
    return ImportReport(
        locations=len(snapshot.locations), variants=len(snapshot.variants), stock_rows=len(snapshot.on_hand)
    )
