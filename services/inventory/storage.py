"""Inventory tables (SQLAlchemy Core) and the store behind the domain's ports, on SQLite and PostgreSQL.

The availability look-up is the decision hot path: one Core statement, built once per shape and reused, joining
variants, locations and stock. Stock changes are single atomic upserts (`on_hand = max(0, on_hand * keep + delta)`)
evaluated by the database against the current row, so concurrent adjustments never lose an update.

Every committed change names its products on the change feed (`WatchChanges`, which keeps the decision's stock cache
exact). On PostgreSQL the names go out as a NOTIFY inside the writing transaction, so a change committed by any
replica (or by `nextbest inventory import`) reaches every replica's feed; on SQLite, the embedded one-process
default, this process publishes what it committed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    and_,
    any_,
    bindparam,
    case,
    null,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import ColumnElement, Executable

from libs.cancellation import uncancelled
from libs.changefeed import ChangeFeed, notify
from libs.db import as_utc, migrate, reader, translate_errors
from services.inventory.domain import (
    Availability,
    AvailabilityQuery,
    Lookup,
    StockChange,
    StockSnapshot,
)

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_inventory"
#: Rows per executemany when importing a stock file.
IMPORT_BATCH = 1000

metadata = MetaData()

locations = Table(
    "inventory_locations",
    metadata,
    Column("location_id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("kind", String, nullable=False),
    CheckConstraint("kind IN ('store', 'warehouse')", name="ck_inventory_locations_kind"),
)

variants = Table(
    "inventory_variants",
    metadata,
    Column("sku", String, primary_key=True),
    Column("product_id", String, nullable=False),
    Column("size", String, nullable=False, server_default=""),
    Column("colour", String, nullable=False, server_default=""),
    Index("ix_inventory_variants_product_id", "product_id"),
)

stock = Table(
    "inventory_stock",
    metadata,
    Column("sku", String, ForeignKey("inventory_variants.sku"), nullable=False),
    Column("location_id", String, ForeignKey("inventory_locations.location_id"), nullable=False),
    Column("on_hand", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("sku", "location_id", name="pk_inventory_stock"),
    CheckConstraint("on_hand >= 0", name="ck_inventory_stock_on_hand"),
)

updates = Table(
    "inventory_updates",
    metadata,
    Column("update_id", String, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


async def migrate_schema(engine: AsyncEngine) -> None:
    """Bring the inventory tables to the newest revision (service start-up and the importer)."""
    await migrate(engine, MIGRATIONS, VERSION_TABLE)




class _Statements:
    """The store's statements for one dialect, built once: only parameters change between calls."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._lookups: dict[tuple[bool, bool, bool], Executable] = {}
        self.record_update = (
            self.insert(updates)
            .on_conflict_do_nothing(index_elements=[updates.c.update_id])
            .returning(updates.c.update_id)
        )
        # keep=0, delta=v sets v; keep=1, delta=d adds d; either way clamped at zero (domain.StockChange.apply_to).
        new_on_hand = stock.c.on_hand * bindparam("keep", type_=BigInteger) + bindparam("delta", type_=BigInteger)
        change = self.insert(stock)
        self.change_stock = change.on_conflict_do_update(
            index_elements=[stock.c.sku, stock.c.location_id],
            set_={"on_hand": case((new_on_hand < 0, 0), else_=new_on_hand), "updated_at": change.excluded.updated_at},
        )
        self.import_locations = self._upsert_changed(locations, ["location_id"], ["kind"])
        self.import_variants = self._upsert_changed(variants, ["sku"], ["product_id", "size", "colour"])
        self.import_stock = self._upsert_changed(stock, ["sku", "location_id"], ["on_hand"], touch="updated_at")

    def _upsert_changed(
        self, table: Table, keys: list[str], values: list[str], touch: str | None = None
    ) -> Executable:
        """Insert rows, or update only those whose values differ, so re-importing a file changes nothing."""
        statement = self.insert(table)
        changed = [table.c[name] != statement.excluded[name] for name in values]
        assignments = {name: statement.excluded[name] for name in [*values, *([touch] if touch else [])]}
        return statement.on_conflict_do_update(
            index_elements=[table.c[name] for name in keys], set_=assignments, where=or_(*changed)
        )

    def _member_of(self, column: Column[str], name: str) -> ColumnElement[bool]:
        if self.dialect == "postgresql":
            # One array parameter keeps the SQL text the same for any list length, so asyncpg's prepared
            # statement is reused instead of re-prepared per distinct length.
            return column == any_(bindparam(name, type_=postgresql.ARRAY(String)))
        return column.in_(bindparam(name, expanding=True))

    def lookup(self, query: AvailabilityQuery) -> tuple[Executable, dict[str, list[str]]]:
        """The one statement answering `query`, and its parameters."""
        shape = (bool(query.skus), bool(query.product_ids), bool(query.location_ids))
        statement = self._lookups.get(shape)
        if statement is None:
            statement = self._lookups[shape] = self._build_lookup(*shape)
        lists = {"skus": query.skus, "product_ids": query.product_ids, "location_ids": query.location_ids}
        return statement, {name: list(values) for name, values in lists.items() if values}

    def _build_lookup(self, by_sku: bool, by_product: bool, by_location: bool) -> Executable:
        wanted_variant = or_(
            *([self._member_of(variants.c.sku, "skus")] if by_sku else []),
            *([self._member_of(variants.c.product_id, "product_ids")] if by_product else []),
        )
        wanted_location = self._member_of(locations.c.location_id, "location_ids") if by_location else true()
        # Every matched variant × every wanted location; the outer joins keep a variant with no such location
        # (so it is still known) and a pair with no stock row (reported as 0 on hand).
        variant_locations = variants.outerjoin(locations, wanted_location)
        pair_match = and_(stock.c.sku == variants.c.sku, stock.c.location_id == locations.c.location_id)
        if self.dialect == "postgresql":
            # Past a few hundred pairs PostgreSQL's planner hashes the whole stock table (37 ms at 100k rows); a
            # LATERAL probe with LIMIT 1 cannot be flattened, so each pair stays one primary-key probe (~1 ms).
            pair_stock = select(stock.c.on_hand, stock.c.updated_at).where(pair_match).limit(1).lateral("pair_stock")
            source = variant_locations.outerjoin(pair_stock, true())
        else:
            pair_stock = stock  # SQLite always runs joins as nested loops over the primary key
            source = variant_locations.outerjoin(stock, pair_match)
        pairs = (
            select(
                variants.c.sku,
                variants.c.product_id,
                variants.c.size,
                variants.c.colour,
                locations.c.location_id,
                locations.c.kind,
                pair_stock.c.on_hand,
                pair_stock.c.updated_at,
            )
            .select_from(source)
            .where(wanted_variant)
        )
        if not by_location:
            return pairs
        # The wanted locations on their own as well, so an unknown one is noticed even when no variant matched.
        known_locations = select(
            null(), null(), null(), null(), locations.c.location_id, locations.c.kind, null(), null()
        ).where(wanted_location)
        return union_all(pairs, known_locations)


def _collect(rows: Iterable[Row[Any]]) -> Lookup:
    found = Lookup(availability=[], skus=set(), product_ids=set(), location_ids=set())
    for sku, product_id, size, colour, location_id, kind, on_hand, updated_at in rows:
        if location_id is not None:
            found.location_ids.add(location_id)
        if sku is None:
            continue
        found.skus.add(sku)
        found.product_ids.add(product_id)
        if location_id is not None:
            found.availability.append(
                Availability(sku, product_id, size, colour, location_id, kind, on_hand or 0, as_utc(updated_at))
            )
    return found


#: The PostgreSQL NOTIFY channel of changed product ids.
CHANGES_CHANNEL = "nextbest_inventory_changes"


class SqlStockTransaction:
    """The domain's unit of work on one connection inside one database transaction."""

    def __init__(self, connection: AsyncConnection, statements: _Statements) -> None:
        self._connection = connection
        self._statements = statements
        self.announced: list[str] = []

    async def record_update(self, update_id: str, applied_at: datetime) -> bool:
        # ON CONFLICT DO NOTHING waits for a concurrent insert of the same id, then returns no row.
        result = await self._connection.execute(
            self._statements.record_update, {"update_id": update_id, "applied_at": applied_at}
        )
        return result.first() is not None

    async def known(self, skus: set[str], location_ids: set[str]) -> tuple[set[str], set[str]]:
        found_skus = await self._connection.scalars(select(variants.c.sku).where(variants.c.sku.in_(sorted(skus))))
        found_locations = await self._connection.scalars(
            select(locations.c.location_id).where(locations.c.location_id.in_(sorted(location_ids)))
        )
        return set(found_skus), set(found_locations)

    async def apply(self, changes: Sequence[StockChange], at: datetime) -> None:
        # A stable sort by row keeps each row's changes in request order (changes to different rows commute)
        # while every transaction locks rows in the same order, so concurrent updates cannot deadlock.
        ordered = sorted(changes, key=lambda change: (change.sku, change.location_id))
        await self._connection.execute(self._statements.change_stock, [_change_params(c, at) for c in ordered])

    async def stock_of(self, pairs: Sequence[tuple[str, str]]) -> list[Availability]:
        query = AvailabilityQuery(
            skus=tuple({sku for sku, _ in pairs}), product_ids=(), location_ids=tuple({loc for _, loc in pairs})
        )
        wanted = set(pairs)
        found = _collect(await self._connection.execute(*self._statements.lookup(query)))
        return [a for a in found.availability if (a.sku, a.location_id) in wanted]

    def announce(self, product_ids: Iterable[str]) -> None:
        self.announced.extend(product_ids)


def _change_params(change: StockChange, at: datetime) -> dict[str, object]:
    if change.set_on_hand is not None:
        keep, delta = 0, change.set_on_hand
    else:
        keep, delta = 1, change.adjust_by or 0
    # `on_hand` is the value of a new row (no previous stock means 0 before the change).
    return {
        "sku": change.sku,
        "location_id": change.location_id,
        "on_hand": change.apply_to(0),
        "updated_at": at,
        "keep": keep,
        "delta": delta,
    }


class SqlInventoryStore:
    """The inventory store on one AsyncEngine; each call takes its own connection from the pool."""

    def __init__(self, engine: AsyncEngine, changes: ChangeFeed | None = None) -> None:
        self._engine = engine
        self._reader = reader(engine)  # no BEGIN/ROLLBACK round trips around the one-statement look-up
        self._statements = _Statements(engine.dialect.name)
        self._postgres = engine.dialect.name == "postgresql"
        self.changes = changes or ChangeFeed()

    async def lookup(self, query: AvailabilityQuery) -> Lookup:
        return await uncancelled(self._lookup(query))  # a passed deadline must not cost the pooled connection

    async def _lookup(self, query: AvailabilityQuery) -> Lookup:
        async with translate_errors("availability look-up"), self._reader.connect() as connection:
            return _collect(await connection.execute(*self._statements.lookup(query)))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlStockTransaction]:
        async with translate_errors("stock update"), self._engine.begin() as connection:
            tx = SqlStockTransaction(connection, self._statements)
            yield tx
            await self._announce(connection, tx.announced)
        if not self._postgres:
            self.changes.publish(tx.announced)  # committed

    async def _announce(self, connection: AsyncConnection, product_ids: Sequence[str]) -> None:
        if self._postgres and product_ids:
            await notify(connection, CHANGES_CHANNEL, product_ids)

    async def import_snapshot(self, snapshot: StockSnapshot, at: datetime) -> None:
        """Upsert a whole stock file in one transaction, in batches; unchanged rows are left as they are."""
        location_rows = [
            {"location_id": location_id, "name": location_id, "kind": kind}
            for location_id, kind in snapshot.locations.items()
        ]
        variant_rows = [
            {"sku": v.sku, "product_id": v.product_id, "size": v.size, "colour": v.colour}
            for v in snapshot.variants.values()
        ]
        stock_rows = [
            {"sku": sku, "location_id": location_id, "on_hand": on_hand, "updated_at": at}
            for (sku, location_id), on_hand in snapshot.on_hand.items()
        ]
        products = sorted({v.product_id for v in snapshot.variants.values()})
        statements = self._statements
        async with translate_errors("stock import"), self._engine.begin() as connection:
            for statement, rows in (
                (statements.import_locations, location_rows),
                (statements.import_variants, variant_rows),
                (statements.import_stock, stock_rows),
            ):
                for start in range(0, len(rows), IMPORT_BATCH):
                    await connection.execute(statement, rows[start : start + IMPORT_BATCH])
            await self._announce(connection, products)
        if not self._postgres:
            self.changes.publish(products)
        async with translate_errors("stock import"), self._engine.begin() as connection:
            # Fresh statistics after a bulk load: without them PostgreSQL misjudges the look-up (and may even
            # JIT-compile it, ~5 ms) until autovacuum gets round to analysing the tables.
            for table in (locations, variants, stock):
                await connection.execute(text(f"ANALYZE {table.name}"))
