"""ERP and transaction CSVs as profile events: column mapping, joins, deterministic ids, row errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from nextbest.common.v1 import common_pb2 as common
from nextbest.profile.v1 import profile_service_pb2 as pb

from libs.protoconv import from_timestamp
from services.profile.importer import MappingError, erp_events, parse_mapping, transaction_events

pytestmark = pytest.mark.unit


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text.strip() + "\n")
    return path


@pytest.fixture
def erp(tmp_path) -> dict[str, Path]:
    return {
        "orders": write(tmp_path, "orders.csv", """
OrderNo,Cust,Mail,Date,Chan,Store,Ship
A1,c-1,,2025-01-10,pos,s-9,0
A2,,ann@example.com,2025-02-01T10:00:00+01:00,web,,4.95
A3,c-3,,2025-03-01,web,,0
A4,,,2025-03-02,web,,0
"""),
        "lines": write(tmp_path, "lines.csv", """
order_id,sku,quantity,unit_price,list_price,category
A1,SKU-1,2,40,50,shoes
A1,SKU-2,1,20,,bags
A2,SKU-3,1,60,60,shoes
A3,SKU-4,x,10,10,
A4,SKU-5,1,10,10,
"""),
        "returns": write(tmp_path, "returns.csv", """
return_id,order_id,returned_at,sku,quantity,refund_amount,method,reason
R1,A1,2025-01-20,SKU-1,1,40,store,size
R1,A1,2025-01-20,SKU-2,1,20,store,size
R2,A9,2025-01-21,SKU-9,1,5,mail,
"""),
        "ledger": write(tmp_path, "ledger.csv", """
entry_id,customer_id,posted_at,type,amount,order_id
L1,,2025-02-10,refund,-15.5,A2
L2,c-7,2025-02-11,write-off,30,
L3,c-7,2025-02-11,bonus,30,
"""),
    }


MAPPING = parse_mapping([
    "orders.order_id=OrderNo", "orders.customer_id=Cust", "orders.email=Mail", "orders.ordered_at=Date",
    "orders.channel=Chan", "orders.store_id=Store", "orders.shipping_fee=Ship",
])


def test_erp_files_become_purchases_returns_and_ledger_entries_joined_to_their_customers(erp):
    report = erp_events(erp, MAPPING)
    by_id = {event.event_id: event for event in report.events}
    assert sorted(by_id) == ["erp:ledger:L1", "erp:ledger:L2", "erp:order:A1", "erp:order:A2", "erp:return:R1"]

    a1 = by_id["erp:order:A1"]
    assert a1.customer_id == "c-1" and a1.source == "erp"
    assert [(line.sku, line.quantity, line.unit_price, line.list_price, line.category) for line in a1.purchase.lines] \
        == [("SKU-1", 2, 40.0, 50.0, "shoes"), ("SKU-2", 1, 20.0, 0.0, "bags")]
    assert (a1.purchase.channel, a1.purchase.store_id, a1.purchase.shipped) == (common.CHANNEL_POS, "s-9", False)
    a2 = by_id["erp:order:A2"]
    assert a2.customer_id == "" and [(i.type, i.value) for i in a2.identifiers] == [
        (common.IDENTIFIER_TYPE_EMAIL, "ann@example.com")
    ]
    assert a2.purchase.shipped and a2.purchase.shipping_fee == 4.95
    assert from_timestamp(a2.occurred_at).isoformat() == "2025-02-01T09:00:00+00:00"

    r1 = by_id["erp:return:R1"]
    assert r1.customer_id == "c-1"  # from its order
    assert [line.sku for line in r1.product_return.lines] == ["SKU-1", "SKU-2"]
    assert (r1.product_return.method, r1.product_return.reason) == (pb.RETURN_METHOD_STORE, "size")

    l1 = by_id["erp:ledger:L1"]
    assert list(l1.identifiers) == list(a2.identifiers)  # via its order
    assert (l1.ledger_entry.type, l1.ledger_entry.amount) == (pb.LEDGER_ENTRY_TYPE_REFUND, 15.5)
    assert by_id["erp:ledger:L2"].ledger_entry.type == pb.LEDGER_ENTRY_TYPE_WRITE_OFF

    assert [error.split(": ", 1)[1] for error in report.errors] == [
        "quantity: not a number: 'x'",
        "order A3: some of its lines are malformed",
        "one of customer_id, email, phone, loyalty_card, account_id: required",
        "one of customer_id, email, phone, loyalty_card, account_id required (or an order_id from the orders file)",
        "type: unknown value 'bonus' (one of refund, write_off, write-off, writeoff)",
    ]
    assert report.errors[0].startswith(f"{erp['lines']}:5")


def test_the_same_files_give_the_same_events(erp):
    assert erp_events(erp, MAPPING).events == erp_events(erp, MAPPING).events


def test_mapping_errors_name_the_problem(erp, tmp_path):
    with pytest.raises(MappingError, match="orders: unknown fields nope"):
        erp_events(erp, {"orders": {"nope": "X"}})
    with pytest.raises(MappingError, match="missing columns for order_id \\(column 'order_id'\\)"):
        erp_events({"orders": erp["orders"]}, {})
    with pytest.raises(MappingError, match="order lines need their orders file"):
        erp_events({"lines": erp["lines"]}, {})
    with pytest.raises(MappingError, match="expected KIND.FIELD=COLUMN"):
        parse_mapping(["orders=x"])


def test_transactions_are_sorted_by_date_with_ids_stable_across_runs(tmp_path):
    path = write(tmp_path, "history.csv", """
customer,date,amount,quantity
c-2,2024-05-02,30,3
c-1,2024-05-01,10,
c-1,2024-05-01,10,
c-3,yesterday,5,
""")
    report = transaction_events(path, {"customer_id": "customer"})
    assert [(e.customer_id, e.purchase.lines[0].unit_price, e.purchase.lines[0].quantity) for e in report.events] == [
        ("c-1", 10.0, 1), ("c-1", 10.0, 1), ("c-2", 10.0, 3),
    ]
    ids = [e.event_id for e in report.events]
    assert len(set(ids)) == 3 and ids[1] == ids[0] + ":2"  # identical rows are distinct purchases
    assert ids == [e.event_id for e in transaction_events(path, {"customer_id": "customer"}).events]
    assert report.errors == [f"{path}:5: date: not an ISO date or date-time: 'yesterday'"]


def test_a_return_with_a_malformed_row_is_left_out_whole(tmp_path, erp):
    # Applied short, its deterministic id would make the corrected file's return a duplicate: the refund lost.
    returns = write(tmp_path, "returns-bad.csv", """
return_id,order_id,returned_at,sku,quantity,refund_amount,method,category
R1,A1,2025-01-20,SKU-1,x,40,store,shoes
R1,A1,2025-01-20,SKU-2,1,20,store,bags
R3,A2,2025-02-20,SKU-3,1,60,courier,shoes
""")
    report = erp_events({"orders": erp["orders"], "lines": erp["lines"], "returns": returns}, MAPPING)
    by_id = {event.event_id: event for event in report.events}
    assert "erp:return:R1" not in by_id
    assert [(line.sku, line.category) for line in by_id["erp:return:R3"].product_return.lines] == [("SKU-3", "shoes")]
    assert f"{returns}:2: quantity: not a number: 'x'" in report.errors
    assert report.errors[-1] == f"{returns}:2: return R1: left out, some of its rows are malformed"

    fixed = write(tmp_path, "returns-fixed.csv", returns.read_text().replace("SKU-1,x,", "SKU-1,1,"))
    again = erp_events({"orders": erp["orders"], "lines": erp["lines"], "returns": fixed}, MAPPING)
    r1 = {event.event_id: event for event in again.events}["erp:return:R1"]
    assert [line.refund_amount for line in r1.product_return.lines] == [40.0, 20.0]


def test_replay_rows_sharing_an_order_id_are_the_lines_of_one_purchase(tmp_path):
    path = write(tmp_path, "lines.csv", """
order,customer,date,amount,quantity,sku
O-2,c-1,2024-05-03,30,3,SKU-A
O-1,c-1,2024-05-01,10,1,SKU-A
O-1,c-1,2024-05-01,24,2,SKU-B
O-3,c-2,2024-05-04,5,1,SKU-C
O-3,c-2,2024-05-04,oops,1,SKU-D
O-4,c-2,2024-05-04,5,1,SKU-C
O-4,c-3,2024-05-04,5,1,SKU-D
""")
    report = transaction_events(path, {"customer_id": "customer", "order_id": "order"})
    assert [(e.event_id, [(line.sku, line.quantity, line.unit_price) for line in e.purchase.lines])
            for e in report.events] == [
        ("replay:O-1", [("SKU-A", 1, 10.0), ("SKU-B", 2, 12.0)]),
        ("replay:O-2", [("SKU-A", 3, 10.0)]),
    ]
    assert report.errors == [
        f"{path}:6: amount: not a number: 'oops'",
        f"{path}:8: order O-4: its lines name different customers",
        f"{path}:6: order O-3: left out, some of its rows are malformed",
        f"{path}:8: order O-4: left out, some of its rows are malformed",
    ]
