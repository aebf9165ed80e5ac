"""Back-end files as profile events: ERP exports (orders, order lines, returns, ledger entries) and historical
transactions for replay, read from CSV through a column mapping.

Every event id is derived from the file's own keys ("erp:order:<order_id>", "erp:return:<return_id>",
"erp:ledger:<entry_id>", "replay:<order_id>"), so importing the same file again sends the same ids and the
profile service applies nothing twice. Customers are named by a customer id column or by identifier columns
(email, phone, loyalty card, account id), which the profile service resolves through the identity service.

A malformed row is reported with its file and line and left out; the rest is imported.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nextbest.common.v1 import common_pb2
from nextbest.profile.v1 import profile_service_pb2 as pb

from libs.protoconv import to_timestamp

#: Identifier columns a file may name the customer by, with their identifier type.
IDENTIFIER_FIELDS = {
    "email": common_pb2.IDENTIFIER_TYPE_EMAIL,
    "phone": common_pb2.IDENTIFIER_TYPE_PHONE,
    "loyalty_card": common_pb2.IDENTIFIER_TYPE_LOYALTY_CARD,
    "account_id": common_pb2.IDENTIFIER_TYPE_ACCOUNT_ID,
}
CUSTOMER_FIELDS = ("customer_id", *IDENTIFIER_FIELDS)
CHANNELS = {
    "web": common_pb2.CHANNEL_WEB,
    "pos": common_pb2.CHANNEL_POS,
    "store": common_pb2.CHANNEL_POS,
    "call_center": common_pb2.CHANNEL_CALL_CENTER,
    "email": common_pb2.CHANNEL_EMAIL,
}
RETURN_METHODS = {"store": pb.RETURN_METHOD_STORE, "mail": pb.RETURN_METHOD_MAIL, "courier": pb.RETURN_METHOD_COURIER}
LEDGER_TYPES = {
    "refund": pb.LEDGER_ENTRY_TYPE_REFUND,
    "write_off": pb.LEDGER_ENTRY_TYPE_WRITE_OFF,
    "write-off": pb.LEDGER_ENTRY_TYPE_WRITE_OFF,
    "writeoff": pb.LEDGER_ENTRY_TYPE_WRITE_OFF,
}
#: The fields each file kind knows (the mapping's keys); the first group is required.
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "orders": (
        ("order_id", "ordered_at"),
        (*CUSTOMER_FIELDS, "channel", "store_id", "shipping_fee", "shipped"),
    ),
    "lines": (("order_id", "sku", "quantity", "unit_price"), ("list_price", "category", "brand", "size", "colour")),
    "returns": (
        ("return_id", "order_id", "returned_at", "sku", "quantity", "refund_amount", "method"),
        (*CUSTOMER_FIELDS, "reason", "category"),
    ),
    "ledger": (("entry_id", "posted_at", "type", "amount"), (*CUSTOMER_FIELDS, "order_id")),
    "transactions": (("date", "amount"), (*CUSTOMER_FIELDS, "order_id", "sku", "quantity", "channel", "store_id")),
}


class MappingError(ValueError):
    """The column mapping does not fit a file (unknown field, missing column)."""


class RowError(ValueError):
    """One row cannot be turned into an event."""


@dataclass
class Report:
    """What a conversion produced and which rows it left out (as "file:line: reason")."""

    events: list[pb.Event] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_mapping(pairs: Iterable[str]) -> dict[str, dict[str, str]]:
    """`kind.field=Column` pairs (from --map flags) as {kind: {field: column}}."""
    mapping: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, sep, column = pair.partition("=")
        kind, dot, name = key.partition(".")
        if not sep or not dot or not column:
            raise MappingError(f"--map {pair!r}: expected KIND.FIELD=COLUMN, e.g. orders.order_id=OrderNo")
        mapping.setdefault(kind.strip(), {})[name.strip()] = column.strip()
    return mapping


class _Rows:
    """The rows of one CSV file with its mapping applied: `row[field]` is the mapped column's value or ""."""

    def __init__(self, path: Path, kind: str, mapping: Mapping[str, str]) -> None:
        self.path = path
        self.kind = kind
        required, optional = FIELDS[kind]
        unknown = sorted(set(mapping) - set(required) - set(optional))
        if unknown:
            raise MappingError(f"{kind}: unknown fields {', '.join(unknown)} (known: {', '.join(required + optional)})")
        self.columns = {name: mapping.get(name, name) for name in required + optional}
        self.required = required

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        with self.path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = set(reader.fieldnames or ())
            missing = [f"{name} (column {self.columns[name]!r})" for name in self.required
                       if self.columns[name] not in header]
            if missing:
                raise MappingError(f"{self.path}: missing columns for {', '.join(missing)}")
            present = {name: column for name, column in self.columns.items() if column in header}
            for row in reader:
                yield reader.line_num, {
                    name: (row.get(column) or "").strip() for name, column in present.items()
                }


def _time(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RowError(f"{name}: not an ISO date or date-time: {value!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _number(value: str, name: str, default: float | None = None) -> float:
    if not value:
        if default is None:
            raise RowError(f"{name}: required")
        return default
    try:
        return float(value)
    except ValueError:
        raise RowError(f"{name}: not a number: {value!r}") from None


def _integer(value: str, name: str, default: int | None = None) -> int:
    number = _number(value, name, None if default is None else float(default))
    if number != int(number):
        raise RowError(f"{name}: not a whole number: {value!r}")
    return int(number)


def _required(row: Mapping[str, str], name: str) -> str:
    if not row.get(name):
        raise RowError(f"{name}: required")
    return row[name]


def _choice(value: str, choices: Mapping[str, int], name: str) -> int:
    if not value:
        return 0
    try:
        return choices[value.lower()]
    except KeyError:
        raise RowError(f"{name}: unknown value {value!r} (one of {', '.join(choices)})") from None


@dataclass(frozen=True)
class Customer:
    customer_id: str
    identifiers: tuple[tuple[int, str], ...]

    def apply(self, event: pb.Event) -> pb.Event:
        event.customer_id = self.customer_id
        if not self.customer_id:
            event.identifiers.extend(common_pb2.Identifier(type=t, value=v) for t, v in self.identifiers)
        return event


def _customer(row: Mapping[str, str]) -> Customer | None:
    identifiers = tuple((kind, row[name]) for name, kind in IDENTIFIER_FIELDS.items() if row.get(name))
    if not row.get("customer_id") and not identifiers:
        return None
    return Customer(row.get("customer_id", ""), identifiers)


def _bool(value: str) -> bool:
    return value.lower() in {"1", "true", "yes", "y", "t"}


def _event_id(*parts: str) -> str:
    """A deterministic id; a key too long for the 128-character limit is shortened to a digest."""
    joined = ":".join(parts)
    if len(joined) <= 128:
        return joined
    return f"{parts[0]}:{hashlib.sha256(joined.encode()).hexdigest()}"


def erp_events(files: Mapping[str, Path], mapping: Mapping[str, Mapping[str, str]], source: str = "erp") -> Report:
    """Events from ERP exports: one purchase per order (with its lines), one return per return id (with its
    lines), one ledger entry per entry id. `files` maps kinds ("orders", "lines", "returns", "ledger") to paths;
    lines need orders. Returns and ledger entries without customer columns take their order's customer."""
    unknown = sorted(set(files) - {"orders", "lines", "returns", "ledger"})
    if unknown:
        raise MappingError(f"unknown file kinds {', '.join(unknown)}")
    if "lines" in files and "orders" not in files:
        raise MappingError("order lines need their orders file")
    report = Report()
    customers_by_order: dict[str, Customer] = {}

    def rows(kind: str) -> Iterator[tuple[str, dict[str, str]]]:
        for line, row in _Rows(files[kind], kind, mapping.get(kind, {})):
            yield f"{files[kind]}:{line}", row

    lines_by_order: dict[str, list[pb.OrderLine]] = {}
    bad_orders: set[str] = set()
    if "lines" in files:
        for where, row in rows("lines"):
            try:
                order_id = _required(row, "order_id")
                quantity = _integer(row["quantity"], "quantity")
                line = pb.OrderLine(
                    sku=_required(row, "sku"),
                    quantity=quantity,
                    unit_price=_number(row["unit_price"], "unit_price"),
                    list_price=_number(row.get("list_price", ""), "list_price", 0.0),
                    category=row.get("category", ""),
                    brand=row.get("brand", ""),
                    size=row.get("size", ""),
                    colour=row.get("colour", ""),
                )
            except RowError as exc:
                report.errors.append(f"{where}: {exc}")
                if row.get("order_id"):
                    bad_orders.add(row["order_id"])  # an order missing a line would be imported wrong
                continue
            lines_by_order.setdefault(order_id, []).append(line)

    if "orders" in files:
        for where, row in rows("orders"):
            try:
                order_id = _required(row, "order_id")
                customer = _customer(row)
                if customer is None:
                    raise RowError(f"one of {', '.join(CUSTOMER_FIELDS)}: required")
                if order_id in bad_orders:
                    raise RowError(f"order {order_id}: some of its lines are malformed")
                lines = lines_by_order.get(order_id)
                if not lines:
                    raise RowError(f"order {order_id}: no lines")
                fee = _number(row.get("shipping_fee", ""), "shipping_fee", 0.0)
                event = pb.Event(
                    event_id=_event_id("erp:order", order_id),
                    occurred_at=to_timestamp(_time(_required(row, "ordered_at"), "ordered_at")),
                    source=source,
                    purchase=pb.Purchase(
                        order_id=order_id,
                        lines=lines,
                        shipping_fee=fee,
                        shipped=_bool(row["shipped"]) if row.get("shipped") else fee > 0,
                        channel=_choice(row.get("channel", ""), CHANNELS, "channel"),
                        store_id=row.get("store_id", ""),
                    ),
                )
            except RowError as exc:
                report.errors.append(f"{where}: {exc}")
                continue
            customers_by_order[order_id] = customer
            report.events.append(customer.apply(event))

    def owner(row: Mapping[str, str]) -> Customer:
        customer = _customer(row) or customers_by_order.get(row.get("order_id", ""))
        if customer is None:
            raise RowError(f"one of {', '.join(CUSTOMER_FIELDS)} required (or an order_id from the orders file)")
        return customer

    if "returns" in files:
        returns: dict[str, tuple[pb.Event, Customer]] = {}
        bad_returns: dict[str, str] = {}  # return id -> where its first malformed row is
        for where, row in rows("returns"):
            try:
                return_id = _required(row, "return_id")
                line = pb.ReturnLine(
                    sku=_required(row, "sku"),
                    quantity=_integer(row["quantity"], "quantity"),
                    refund_amount=_number(row["refund_amount"], "refund_amount"),
                    category=row.get("category", ""),
                )
                if return_id not in returns:
                    customer = owner(row)
                    event = pb.Event(
                        event_id=_event_id("erp:return", return_id),
                        occurred_at=to_timestamp(_time(_required(row, "returned_at"), "returned_at")),
                        source=source,
                        product_return=pb.ProductReturn(
                            order_id=_required(row, "order_id"),
                            method=_choice(_required(row, "method"), RETURN_METHODS, "method"),
                            reason=row.get("reason", ""),
                        ),
                    )
                    returns[return_id] = (event, customer)
            except RowError as exc:
                report.errors.append(f"{where}: {exc}")
                if row.get("return_id"):
                    bad_returns.setdefault(row["return_id"], where)
                continue
            returns[return_id][0].product_return.lines.append(line)
        _leave_out(returns, bad_returns, "return", report)
        report.events.extend(customer.apply(event) for event, customer in returns.values())

    if "ledger" in files:
        for where, row in rows("ledger"):
            try:
                entry_id = _required(row, "entry_id")
                event = pb.Event(
                    event_id=_event_id("erp:ledger", entry_id),
                    occurred_at=to_timestamp(_time(_required(row, "posted_at"), "posted_at")),
                    source=source,
                    ledger_entry=pb.LedgerEntry(
                        type=_choice(_required(row, "type"), LEDGER_TYPES, "type"),
                        amount=abs(_number(row["amount"], "amount")),  # ERPs book refunds as negative amounts
                        order_id=row.get("order_id", ""),
                    ),
                )
                report.events.append(owner(row).apply(event))
            except RowError as exc:
                report.errors.append(f"{where}: {exc}")
    return report


def _leave_out(groups: dict[str, Any], malformed: Mapping[str, str], what: str, report: Report) -> None:
    """Drop each group (an order, a return) one of whose rows is malformed, where that row is: applied short, the
    group's deterministic id would make the corrected file's group a duplicate, and its missing rows lost."""
    for group_id, where in malformed.items():
        if groups.pop(group_id, None) is not None:
            report.errors.append(f"{where}: {what} {group_id}: left out, some of its rows are malformed")


def transaction_events(path: Path, mapping: Mapping[str, str], source: str = "replay") -> Report:
    """Purchase events from a CSV of historical transactions (customer, date, amount, ...), sorted by date.
    Rows sharing an order_id are the lines of one purchase (dated by its first row); an order with a malformed
    row is left out whole. Without an order_id column a row is a purchase of its own, its id a digest of its
    mapped values and its position among identical rows, so a re-run sends the same ids."""
    report = Report()
    purchases: list[tuple[datetime, pb.Event, Customer]] = []
    orders: dict[str, tuple[datetime, pb.Event, Customer]] = {}  # the purchases with an order id, by it
    bad_orders: dict[str, str] = {}  # order id -> where its first malformed row is
    seen: dict[str, int] = {}
    for line, row in _Rows(path, "transactions", mapping):
        where = f"{path}:{line}"
        order_id = row.get("order_id", "")
        try:
            customer = _customer(row)
            if customer is None:
                raise RowError(f"one of {', '.join(CUSTOMER_FIELDS)}: required")
            when = _time(_required(row, "date"), "date")
            amount = _number(row["amount"], "amount")
            quantity = _integer(row.get("quantity", ""), "quantity", 1)
            if quantity < 1:
                raise RowError(f"quantity: must be at least 1, got {quantity}")
            order_line = pb.OrderLine(sku=row.get("sku") or "UNKNOWN", quantity=quantity, unit_price=amount / quantity)
            if order_id in orders:
                if orders[order_id][2] != customer:
                    raise RowError(f"order {order_id}: its lines name different customers")
                orders[order_id][1].purchase.lines.append(order_line)
                continue
            key = order_id or hashlib.sha256(repr(sorted(row.items())).encode()).hexdigest()[:32]
            seen[key] = seen.get(key, 0) + 1
            suffix = () if seen[key] == 1 else (str(seen[key]),)
            event = pb.Event(
                event_id=_event_id("replay", key, *suffix),
                occurred_at=to_timestamp(when),
                source=source,
                purchase=pb.Purchase(
                    order_id=order_id,
                    lines=[order_line],
                    channel=_choice(row.get("channel", ""), CHANNELS, "channel"),
                    store_id=row.get("store_id", ""),
                ),
            )
        except RowError as exc:
            report.errors.append(f"{where}: {exc}")
            if order_id:
                bad_orders.setdefault(order_id, where)
            continue
        purchases.append((when, event, customer))
        if order_id:
            orders[order_id] = purchases[-1]
    _leave_out(orders, bad_orders, "order", report)
    kept = sorted(
        (p for p in purchases if not p[1].purchase.order_id or p[1].purchase.order_id in orders), key=lambda p: p[0]
    )
    report.events = [customer.apply(event) for _, event, customer in kept]
    return report
