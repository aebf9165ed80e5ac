"""Inventory domain: request validation, the clamp-at-zero rule, unknown keys, idempotent all-or-nothing updates."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from libs.errors import InvalidArgument, NotFound
from services.inventory.domain import (
    Availability,
    AvailabilityQuery,
    Inventory,
    LocationKind,
    Lookup,
    StockChange,
    Variant,
    parse_query,
    validate_update,
)
from services.inventory.settings import InventorySettings

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T1 = datetime(2025, 1, 2, tzinfo=UTC)


class FakeTransaction:
    """Works on copies; the store adopts them only when the unit of work completes."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.stock = dict(store.stock)
        self.updates = set(store.updates)
        self.applied: list[StockChange] = []
        self.announced: list[str] = []

    async def record_update(self, update_id: str, applied_at: datetime) -> bool:
        if update_id in self.updates:
            return False
        self.updates.add(update_id)
        return True

    async def known(self, skus: set[str], location_ids: set[str]) -> tuple[set[str], set[str]]:
        return skus & self.store.variants.keys(), location_ids & self.store.locations.keys()

    async def apply(self, changes: Sequence[StockChange], at: datetime) -> None:
        for change in changes:
            pair = (change.sku, change.location_id)
            self.stock[pair] = (change.apply_to(self.stock.get(pair, (0, at))[0]), at)
            self.applied.append(change)

    async def stock_of(self, pairs: Sequence[tuple[str, str]]) -> list[Availability]:
        return [self.store.availability(sku, location, self.stock) for sku, location in reversed(pairs)]

    def announce(self, product_ids) -> None:
        self.announced.extend(product_ids)


class FakeStore:
    def __init__(self, locations: dict[str, LocationKind], variants: list[Variant]) -> None:
        self.locations = locations
        self.variants = {v.sku: v for v in variants}
        self.stock: dict[tuple[str, str], tuple[int, datetime]] = {}
        self.updates: set[str] = set()
        self.transactions: list[FakeTransaction] = []
        #: Products announced by committed transactions (what the change feed would carry).
        self.announced: list[str] = []

    def availability(self, sku: str, location_id: str, stock: dict) -> Availability:
        v = self.variants[sku]
        on_hand, at = stock.get((sku, location_id), (0, None))
        return Availability(sku, v.product_id, v.size, v.colour, location_id, self.locations[location_id], on_hand, at)

    async def lookup(self, query: AvailabilityQuery) -> Lookup:
        wanted = [v for v in self.variants.values() if v.sku in query.skus or v.product_id in query.product_ids]
        wanted_locations = [loc for loc in self.locations if not query.location_ids or loc in query.location_ids]
        # Reversed so the domain's ordering is what the tests see.
        pairs = [self.availability(v.sku, loc, self.stock) for v in reversed(wanted) for loc in wanted_locations]
        return Lookup(pairs, {v.sku for v in wanted}, {v.product_id for v in wanted}, set(wanted_locations))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTransaction]:
        tx = FakeTransaction(self)
        self.transactions.append(tx)
        yield tx
        self.stock, self.updates = tx.stock, tx.updates  # reached only when the block did not raise
        self.announced.extend(tx.announced)


@pytest.fixture
def store() -> FakeStore:
    store = FakeStore(
        {"s1": "store", "dc": "warehouse"},
        [Variant("TEE-S", "TEE", "S", "red"), Variant("TEE-M", "TEE", "M", "red"), Variant("CAP", "CAP", "", "")],
    )
    store.stock[("TEE-S", "s1")] = (4, T0)
    return store


@pytest.fixture
def inventory(store: FakeStore) -> Inventory:
    return Inventory(store, max_items=3, clock=lambda: T1)


# --- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("skus", "product_ids", "location_ids", "field"),
    [
        ([], [], [], "skus"),
        ([], [], ["s1"], "skus"),
        (["a", "b", "c", "d"], [], [], "skus"),
        ([], ["a", "b", "c", "d"], [], "product_ids"),
        (["a"], [], ["1", "2", "3", "4"], "location_ids"),
        (["a", ""], [], [], "skus[1]"),
        ([], ["", "p"], [], "product_ids[0]"),
        (["a"], [], ["s1", ""], "location_ids[1]"),
    ],
)
def test_bad_lookups_name_the_field(skus, product_ids, location_ids, field):
    with pytest.raises(InvalidArgument) as error:
        parse_query(skus, product_ids, location_ids, max_items=3)
    assert error.value.field == field


def test_a_lookup_at_the_limit_is_accepted():
    query = parse_query(["a", "b", "c"], ["p"], [], max_items=3)
    assert query == AvailabilityQuery(("a", "b", "c"), ("p",), ())


@pytest.mark.parametrize(
    ("update_id", "changes", "field"),
    [
        ("", [StockChange("a", "s1", adjust_by=1)], "update_id"),
        ("u", [], "changes"),
        ("u", [StockChange("a", "s1", adjust_by=1)] * 4, "changes"),
        ("u", [StockChange("a", "s1", adjust_by=1), StockChange("", "s1", adjust_by=1)], "changes[1].sku"),
        ("u", [StockChange("a", "", set_on_hand=1)], "changes[0].location_id"),
        ("u", [StockChange("a", "s1")], "changes[0].change"),
        ("u", [StockChange("a", "s1", set_on_hand=1, adjust_by=1)], "changes[0].change"),
        ("u", [StockChange("a", "s1", set_on_hand=-1)], "changes[0].set_on_hand"),
    ],
)
def test_bad_updates_name_the_field(update_id, changes, field):
    with pytest.raises(InvalidArgument) as error:
        validate_update(update_id, changes, max_items=3)
    assert error.value.field == field


def test_a_zero_set_and_a_negative_or_zero_adjustment_are_valid():
    validate_update(
        "u",
        [
            StockChange("a", "s1", set_on_hand=0),
            StockChange("a", "s1", adjust_by=-5),
            StockChange("a", "s1", adjust_by=0),
        ],
        max_items=3,
    )


# --- clamp semantics --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "before", "after"),
    [
        (StockChange("a", "s", set_on_hand=7), 100, 7),
        (StockChange("a", "s", set_on_hand=0), 3, 0),
        (StockChange("a", "s", adjust_by=5), 3, 8),
        (StockChange("a", "s", adjust_by=-3), 3, 0),
        (StockChange("a", "s", adjust_by=-10), 3, 0),
        (StockChange("a", "s", adjust_by=-1), 0, 0),
    ],
)
def test_stock_never_goes_below_zero(change, before, after):
    assert change.apply_to(before) == after


# --- CheckAvailability ------------------------------------------------------------------------------------------


async def test_availability_is_sorted_and_lists_unknown_keys_once_in_request_order(inventory):
    result = await inventory.check_availability(["TEE-S", "NOPE", "NOPE"], ["GHOST", "CAP"], [])
    assert [(a.sku, a.location_id) for a in result.availability] == [
        ("CAP", "dc"),
        ("CAP", "s1"),
        ("TEE-S", "dc"),
        ("TEE-S", "s1"),
    ]
    assert result.unknown == ["NOPE", "GHOST"]
    tee_s1 = result.availability[-1]
    assert (tee_s1.on_hand, tee_s1.updated_at, tee_s1.location_kind) == (4, T0, "store")


async def test_an_unknown_location_is_not_found_and_named(inventory):
    with pytest.raises(NotFound) as error:
        await inventory.check_availability(["TEE-S"], [], ["s1", "atlantis"])
    assert "location_ids[1]" in error.value.message and "atlantis" in error.value.message


# --- UpdateStock ------------------------------------------------------------------------------------------------


async def test_update_applies_changes_and_returns_pairs_in_request_order(inventory, store):
    result = await inventory.update_stock(
        "u1",
        [
            StockChange("TEE-S", "s1", adjust_by=-10),
            StockChange("CAP", "dc", set_on_hand=3),
            StockChange("TEE-S", "s1", adjust_by=2),
        ],
    )
    assert not result.duplicate
    assert [(a.sku, a.location_id, a.on_hand, a.updated_at) for a in result.availability] == [
        ("TEE-S", "s1", 2, T1),  # clamped to 0 by the first change, then +2
        ("CAP", "dc", 3, T1),
    ]
    assert store.stock == {("TEE-S", "s1"): (2, T1), ("CAP", "dc"): (3, T1)}
    assert sorted(set(store.announced)) == ["CAP", "TEE"]  # the change feed names the changed products


async def test_a_repeated_update_id_changes_nothing(inventory, store):
    await inventory.update_stock("u1", [StockChange("TEE-S", "s1", adjust_by=-1)])
    again = await inventory.update_stock("u1", [StockChange("TEE-S", "s1", adjust_by=-1)])
    assert again.duplicate
    assert [(a.sku, a.on_hand) for a in again.availability] == [("TEE-S", 3)]
    assert store.stock[("TEE-S", "s1")] == (3, T1)
    assert store.transactions[-1].applied == []
    assert store.announced == ["TEE"]  # only the first, applied update is announced


@pytest.mark.parametrize(
    ("bad", "field", "name"),
    [
        (StockChange("GHOST", "s1", adjust_by=1), "changes[1].sku", "GHOST"),
        (StockChange("CAP", "atlantis", adjust_by=1), "changes[1].location_id", "atlantis"),
    ],
)
async def test_one_unknown_key_applies_no_change_and_records_no_update_id(inventory, store, bad, field, name):
    with pytest.raises(NotFound) as error:
        await inventory.update_stock("u1", [StockChange("TEE-S", "s1", set_on_hand=50), bad])
    assert error.value.message.startswith(field) and name in error.value.message
    assert store.stock == {("TEE-S", "s1"): (4, T0)}
    assert store.transactions[-1].applied == []
    # The id was not consumed: the corrected update goes through.
    result = await inventory.update_stock("u1", [StockChange("TEE-S", "s1", set_on_hand=50)])
    assert not result.duplicate and result.availability[0].on_hand == 50


def test_settings_defaults_and_environment(monkeypatch):
    assert (InventorySettings().port, InventorySettings().max_items) == (50054, 1000)
    monkeypatch.setenv("NEXTBEST_INVENTORY_MAX_ITEMS", "25")
    monkeypatch.setenv("NEXTBEST_INVENTORY_PORT", "6000")
    settings = InventorySettings()
    assert (settings.max_items, settings.port, settings.service_name) == (25, 6000, "inventory")
