"""`nextbest identity link --online`: every row through a real identity service's Resolve (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv

import pytest

from cli.main import build_parser
from libs.settings import CommonSettings
from services.identity.app import build
from services.identity.matching.linker import pairwise_score
from services.identity.matching.synth import generate, write_csv
from services.identity.settings import IdentitySettings

pytestmark = pytest.mark.integration


async def test_online_link_resolves_b_against_a_service_loaded_with_a(serve, database_url, tmp_path, capsys):
    server, _ = await serve(
        build(IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path)))
    )
    rows = generate(400, seed=12)
    a, b, out = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "out.csv"
    write_csv(a, rows[:280])
    write_csv(b, rows[280:])
    args = build_parser().parse_args(
        ["identity", "link", str(a), str(b), "--online", f"127.0.0.1:{server.port}", "--concurrency", "1",
         "--out", str(out), "--truth", "entity_id"]
    )
    assert await args.func(args) == 0
    printed = capsys.readouterr().out
    assert "online via" in printed and "B records linked to a customer of A:" in printed
    with out.open() as handle:
        written = {row["record_id"]: row["customer_id"] for row in csv.DictReader(handle)}
    assert list(written) == [row["record_id"] for row in rows]
    assert all(customer_id.startswith("c_") for customer_id in written.values())
    # Built-in default m/u (nothing estimated yet) and no phone evidence: still far better than chance.
    score = pairwise_score([written[row["record_id"]] for row in rows], [row["entity_id"] for row in rows])
    assert score.precision > 0.95 and score.recall > 0.8, score


async def test_steward_commands_merge_unmerge_and_forget(serve, database_url, tmp_path, capsys):
    import json

    from nextbest.common.v1 import common_pb2 as common
    from nextbest.identity.v1 import identity_service_pb2 as pb
    from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc

    server, channel = await serve(
        build(IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path)))
    )
    stub = pb_grpc.IdentityServiceStub(channel)
    ids = []
    for email in ("x@example.com", "y@example.com"):
        identifier = common.Identifier(type=common.IDENTIFIER_TYPE_EMAIL, value=email)
        created = await stub.Resolve(pb.ResolveRequest(identifiers=[identifier], create_if_missing=True))
        ids.append(created.customer_id)
    target = f"127.0.0.1:{server.port}"

    async def run(*argv: str) -> tuple[int, str]:
        argv = ("identity", *argv, "--reason", "ticket 7", "--actor", "ops", "--target", target)
        args = build_parser().parse_args(list(argv))
        code = await args.func(args)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, out = await run("merge", ids[0], ids[1])
    assert code == 0 and json.loads(out)["identifiers_moved"] == 1
    merge_id = json.loads(out)["merge_id"]
    code, out = await run("unmerge", merge_id)
    assert code == 0 and json.loads(out)["restored_customer_id"] == ids[1]
    code, out = await run("forget", ids[1])
    assert code == 0 and json.loads(out)["erased_now"] is True
    code, out = await run("forget", "c_unknown")
    assert code == 1 and "NOT_FOUND" in out
