"""Stock CSV parsing: the content it yields, and every problem reported with its line and column."""

from __future__ import annotations

import io

import pytest

from services.inventory.domain import Variant
from services.inventory.importer import COLUMNS, StockFileError, parse_stock_csv

pytestmark = pytest.mark.unit

HEADER = ",".join(COLUMNS)


def parse(*rows: str, header: str = HEADER):
    return parse_stock_csv(io.StringIO("\n".join([header, *rows]) + "\n", newline=""), source="stock.csv")


def problems(*rows: str, header: str = HEADER) -> list[str]:
    with pytest.raises(StockFileError) as error:
        parse(*rows, header=header)
    assert str(error.value).startswith("stock.csv: ")
    return error.value.problems


def test_a_valid_file_yields_locations_variants_and_quantities():
    snapshot = parse(
        "TEE-S,TEE,S,red,s1,store,4",
        "",
        "TEE-S,TEE,S,red,dc,warehouse,100",
        ' CAP , CAP ,,"navy, dark",dc,warehouse,0',
    )
    assert snapshot.locations == {"s1": "store", "dc": "warehouse"}
    assert snapshot.variants == {
        "TEE-S": Variant("TEE-S", "TEE", "S", "red"),
        "CAP": Variant("CAP", "CAP", "", "navy, dark"),
    }
    assert snapshot.on_hand == {("TEE-S", "s1"): 4, ("TEE-S", "dc"): 100, ("CAP", "dc"): 0}


def test_columns_may_come_in_any_order():
    header = "on_hand,location_id,location_kind,colour,size,product_id,sku"
    snapshot = parse("7,s1,store,red,S,TEE,TEE-S", header=header)
    assert snapshot.on_hand == {("TEE-S", "s1"): 7}
    assert snapshot.variants["TEE-S"] == Variant("TEE-S", "TEE", "S", "red")


def test_a_header_only_file_is_empty_and_an_empty_file_is_an_error():
    assert parse().on_hand == {}
    with pytest.raises(StockFileError) as error:
        parse_stock_csv(io.StringIO(""), source="stock.csv")
    assert error.value.problems[0].startswith("line 1: empty")


def test_header_problems_name_the_column():
    found = problems("a,b,c", header="sku,product_id,size,colour,location_id,kind,on_hand,on_hand")
    assert found == [
        "line 1, column location_kind: missing from the header",
        "line 1, column kind: not a stock file column",
        "line 1, column on_hand: appears more than once",
    ]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("TEE-S,TEE,S,red,s1,store,many", "line 2, column on_hand: not a whole number: 'many'"),
        ("TEE-S,TEE,S,red,s1,store,1.5", "line 2, column on_hand: not a whole number: '1.5'"),
        ("TEE-S,TEE,S,red,s1,store,", "line 2, column on_hand: not a whole number: ''"),
        ("TEE-S,TEE,S,red,s1,store,-1", "line 2, column on_hand: must be >= 0, got -1"),
        ("TEE-S,TEE,S,red,s1,store,99999999999999999999", "line 2, column on_hand: too large: 99999999999999999999"),
        ("TEE-S,TEE,S,red,s1,shop,1", "line 2, column location_kind: must be one of store, warehouse, got 'shop'"),
        (",TEE,S,red,s1,store,1", "line 2, column sku: required"),
        ("TEE-S, ,S,red,s1,store,1", "line 2, column product_id: required"),
        ("TEE-S,TEE,S,red,,store,1", "line 2, column location_id: required"),
        ("TEE-S,TEE,S,red,s1,store", "line 2: expected 7 fields, got 6"),
    ],
)
def test_a_malformed_row_is_reported_with_line_and_column(row, expected):
    assert problems(row) == [expected]


def test_contradictions_between_rows_point_at_both_lines():
    found = problems(
        "TEE-S,TEE,S,red,s1,store,1",
        "TEE-S,TEE,M,red,dc,warehouse,1",
        "CAP,CAP,,,s1,warehouse,1",
        "TEE-S,TEE,S,red,s1,store,2",
    )
    assert found == [
        "line 3, column size: sku 'TEE-S' has size 'S' on line 2",
        "line 4, column location_kind: location 's1' is a store on line 2",
        "line 5, column location_id: sku 'TEE-S' at 's1' is already on line 2",
    ]


def test_every_problem_in_the_file_is_reported_at_once():
    rows = ["TEE-S,TEE,S,red,s1,store,1"] + [f"X{i},X,,,s1,store,bad" for i in range(25)]
    with pytest.raises(StockFileError) as error:
        parse(*rows)
    assert len(error.value.problems) == 25
    assert error.value.problems[-1] == "line 27, column on_hand: not a whole number: 'bad'"
    assert "25 problem(s), nothing imported" in str(error.value)
    assert "... and 5 more" in str(error.value)


def test_line_numbers_count_physical_lines_including_quoted_newlines():
    found = problems('TEE-S,TEE,S,"red\nand blue",s1,store,1', "CAP,CAP,,,s1,store,x")
    assert found == ["line 4, column on_hand: not a whole number: 'x'"]
