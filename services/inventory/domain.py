"""Inventory domain: validating look-ups and stock changes, the clamp-at-zero rule, idempotent atomic updates.

No gRPC and no SQL here: the store is a port (`InventoryStore`, with a `StockTransaction` unit of work), implemented
with SQLAlchemy Core in storage.py and with dictionaries in the unit tests.

Stock never goes below zero. `set_on_hand` must be >= 0; `adjust_by` clamps the result at 0, so selling more than
the recorded stock leaves 0 rather than a debt (the record was wrong; the next count or import corrects it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from libs.errors import InvalidArgument, NotFound

LocationKind = Literal["store", "warehouse"]
LOCATION_KINDS: tuple[LocationKind, ...] = ("store", "warehouse")


@dataclass(frozen=True, slots=True)
class Availability:
    """One SKU variant's stock at one location; `updated_at` is None when the pair never had a stock row."""

    sku: str
    product_id: str
    size: str
    colour: str
    location_id: str
    location_kind: LocationKind
    on_hand: int
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class AvailabilityQuery:
    """A validated look-up: variants by SKU and/or by product, at the given locations (empty: every location)."""

    skus: tuple[str, ...]
    product_ids: tuple[str, ...]
    location_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the store found for a query: the (variant, location) pairs and which requested keys exist."""

    availability: list[Availability]
    skus: set[str]
    product_ids: set[str]
    #: Requested locations that exist (every location seen when none was requested).
    location_ids: set[str]


@dataclass(frozen=True, slots=True)
class AvailabilityResult:
    availability: list[Availability]
    #: Requested SKUs and product ids that are not in the catalogue, in request order.
    unknown: list[str]


@dataclass(frozen=True, slots=True)
class StockChange:
    """One change to one (variant, location): exactly one of `set_on_hand` and `adjust_by` is set."""

    sku: str
    location_id: str
    set_on_hand: int | None = None
    adjust_by: int | None = None

    def apply_to(self, on_hand: int) -> int:
        """The quantity after this change; an adjustment never takes it below zero."""
        if self.set_on_hand is not None:
            return self.set_on_hand
        return max(0, on_hand + (self.adjust_by or 0))


@dataclass(frozen=True, slots=True)
class UpdateResult:
    #: The update id had been applied before; nothing changed and `availability` is the current stock.
    duplicate: bool
    #: Stock of the changed pairs after the update, in the order the changes first named them.
    availability: list[Availability]


@dataclass(frozen=True, slots=True)
class Variant:
    sku: str
    product_id: str
    size: str
    colour: str


@dataclass(frozen=True, slots=True)
class StockSnapshot:
    """A whole stock file's content: its locations, variants and absolute quantities, each key once."""

    locations: dict[str, LocationKind]
    variants: dict[str, Variant]
    on_hand: dict[tuple[str, str], int]


class StockTransaction(Protocol):
    """One atomic unit of work: everything done through it commits together or not at all."""

    async def record_update(self, update_id: str, applied_at: datetime) -> bool:
        """Record the update id; False when it was already recorded (also by a concurrent transaction)."""
        ...

    async def known(self, skus: set[str], location_ids: set[str]) -> tuple[set[str], set[str]]:
        """Which of these SKUs and locations exist."""
        ...

    async def apply(self, changes: Sequence[StockChange], at: datetime) -> None:
        """Apply the changes in order, each atomically against the current row (no lost concurrent updates)."""
        ...

    async def stock_of(self, pairs: Sequence[tuple[str, str]]) -> list[Availability]:
        """Availability of these (sku, location_id) pairs as this transaction sees them."""
        ...

    def announce(self, product_ids: Iterable[str]) -> None:
        """These products' stock changed: watchers hear of it once (and only if) the transaction commits."""
        ...


class InventoryStore(Protocol):
    async def lookup(self, query: AvailabilityQuery) -> Lookup:
        """All known requested variants at the requested locations, in one round trip."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[StockTransaction]:
        """A unit of work that commits when the block exits normally and rolls back when it raises."""
        ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _check_ids(field: str, values: Sequence[str], max_items: int) -> tuple[str, ...]:
    if len(values) > max_items:
        raise InvalidArgument(field, f"at most {max_items} per request, got {len(values)}")
    for index, value in enumerate(values):
        if not value:
            raise InvalidArgument(f"{field}[{index}]", "must not be empty")
    return tuple(values)


def parse_query(
    skus: Sequence[str], product_ids: Sequence[str], location_ids: Sequence[str], *, max_items: int
) -> AvailabilityQuery:
    """Validate a look-up; errors name the offending field, e.g. `skus[2]: must not be empty`."""
    if not skus and not product_ids:
        raise InvalidArgument("skus", "give at least one SKU or product id")
    return AvailabilityQuery(
        skus=_check_ids("skus", skus, max_items),
        product_ids=_check_ids("product_ids", product_ids, max_items),
        location_ids=_check_ids("location_ids", location_ids, max_items),
    )


def validate_update(update_id: str, changes: Sequence[StockChange], *, max_items: int) -> None:
    """Check what needs no database: the update id and each change's fields."""
    if not update_id:
        raise InvalidArgument("update_id", "required (the idempotency key)")
    if not changes:
        raise InvalidArgument("changes", "at least one change is required")
    if len(changes) > max_items:
        raise InvalidArgument("changes", f"at most {max_items} per request, got {len(changes)}")
    for index, change in enumerate(changes):
        if not change.sku:
            raise InvalidArgument(f"changes[{index}].sku", "must not be empty")
        if not change.location_id:
            raise InvalidArgument(f"changes[{index}].location_id", "must not be empty")
        if (change.set_on_hand is None) == (change.adjust_by is None):
            raise InvalidArgument(f"changes[{index}].change", "set exactly one of set_on_hand and adjust_by")
        if change.set_on_hand is not None and change.set_on_hand < 0:
            raise InvalidArgument(f"changes[{index}].set_on_hand", f"must be >= 0, got {change.set_on_hand}")


class Inventory:
    """The inventory use cases behind the two RPCs."""

    def __init__(
        self, store: InventoryStore, *, max_items: int, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self._store = store
        self._max_items = max_items
        self._clock = clock

    async def check_availability(
        self, skus: Sequence[str], product_ids: Sequence[str], location_ids: Sequence[str]
    ) -> AvailabilityResult:
        """Stock of every known requested variant at every requested location (0 where there is no stock row)."""
        query = parse_query(skus, product_ids, location_ids, max_items=self._max_items)
        found = await self._store.lookup(query)
        for index, location_id in enumerate(query.location_ids):
            if location_id not in found.location_ids:
                raise NotFound(f"location_ids[{index}]: location {location_id!r} not found")
        unknown = [sku for sku in dict.fromkeys(query.skus) if sku not in found.skus]
        unknown += [product for product in dict.fromkeys(query.product_ids) if product not in found.product_ids]
        availability = sorted(found.availability, key=lambda a: (a.sku, a.location_id))
        return AvailabilityResult(availability=availability, unknown=unknown)

    async def update_stock(self, update_id: str, changes: Sequence[StockChange]) -> UpdateResult:
        """Apply all changes atomically, once per update id; any unknown SKU or location applies none."""
        validate_update(update_id, changes, max_items=self._max_items)
        pairs = list(dict.fromkeys((change.sku, change.location_id) for change in changes))
        now = self._clock()
        async with self._store.transaction() as tx:
            # Recording the id first makes a concurrent duplicate wait on it, then see it as taken.
            if not await tx.record_update(update_id, now):
                return UpdateResult(duplicate=True, availability=_in_order(await tx.stock_of(pairs), pairs))
            known_skus, known_locations = await tx.known({c.sku for c in changes}, {c.location_id for c in changes})
            for index, change in enumerate(changes):
                if change.sku not in known_skus:
                    raise NotFound(f"changes[{index}].sku: unknown sku {change.sku!r}")
                if change.location_id not in known_locations:
                    raise NotFound(f"changes[{index}].location_id: location {change.location_id!r} not found")
            await tx.apply(changes, now)
            availability = _in_order(await tx.stock_of(pairs), pairs)
            tx.announce(a.product_id for a in availability)
            return UpdateResult(duplicate=False, availability=availability)


def _in_order(availability: list[Availability], pairs: list[tuple[str, str]]) -> list[Availability]:
    position = {pair: index for index, pair in enumerate(pairs)}
    return sorted(availability, key=lambda a: position[(a.sku, a.location_id)])
