"""`nextbest identity generate` and `nextbest identity link` (batch): any column names, one file or two, truth."""

from __future__ import annotations

import csv

import pytest

from cli.main import main

pytestmark = pytest.mark.unit


def rename_columns(path, renames: dict[str, str]) -> None:
    lines = path.read_text().splitlines(keepends=True)
    header = ",".join(renames.get(column, column) for column in lines[0].rstrip("\r\n").split(","))
    path.write_text(header + "\r\n" + "".join(lines[1:]))


def test_dedupe_one_file_with_a_column_mapping_and_truth(tmp_path, capsys):
    source = tmp_path / "people.csv"
    assert main(["identity", "generate", "3000", "--seed", "4", "--out", str(source)]) == 0
    rename_columns(source, {"given_name": "FirstName", "surname": "LastName", "record_id": "Id"})
    out = tmp_path / "pairs.csv"
    code = main(
        ["identity", "link", str(source), "--map", "given_name=FirstName,surname=LastName", "--id-column", "Id",
         "--out", str(out), "--truth", "entity_id"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    f1 = float(printed.split(" F1 ")[1].split()[0])
    assert f1 >= 0.98, printed
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3000 and set(rows[0]) == {"record_id", "customer_id"}
    with source.open() as handle:
        people = {row["Id"]: row["entity_id"] for row in csv.DictReader(handle)}
    # Records of one entity mostly share a customer id; distinct customers are fewer than records.
    assert len({row["customer_id"] for row in rows}) < 3000
    same = [row for row in rows if people[row["record_id"]] == people[rows[0]["record_id"]]]
    assert len({row["customer_id"] for row in same}) == 1


def test_link_b_to_a_with_a_config_file(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["identity", "generate", "2000", "--seed", "8", "--out", str(a), "--split", str(b)]) == 0
    for path in (a, b):
        rename_columns(path, {"date_of_birth": "DOB"})
    config = tmp_path / "mapping.json"
    config.write_text('{"id": "record_id", "fields": {"date_of_birth": "DOB"}}')
    out = tmp_path / "out.csv"
    assert main(["identity", "link", str(a), str(b), "--config", str(config), "--out", str(out),
                 "--truth", "entity_id"]) == 0
    printed = capsys.readouterr().out
    assert "B records linked to a customer of A:" in printed
    with out.open() as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == 2000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--map", "given_name=Nope"], "no column 'Nope' (mapped to given_name)"),
        (["--map", "shoe_size=Size"], "unknown trait(s) shoe_size"),
        (["--map", "given_name"], "is not trait=COLUMN"),
        (["--id-column", "Missing"], "no record id column 'Missing'"),
        (["--truth", "Missing"], "no truth column 'Missing'"),
    ],
)
def test_bad_mappings_fail_with_a_message_and_no_output(tmp_path, capsys, extra, message):
    source = tmp_path / "people.csv"
    main(["identity", "generate", "50", "--out", str(source)])
    out = tmp_path / "out.csv"
    assert main(["identity", "link", str(source), "--out", str(out), *extra]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
