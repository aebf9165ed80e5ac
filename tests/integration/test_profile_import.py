"""`nextbest profile import | replay | segments apply` against a real profile service (and identity), on SQLite
and PostgreSQL: ERP re-imports change nothing, an interrupted import resumes, net value after ledger refunds."""

from __future__ import annotations

import json

import pytest
from nextbest.profile.v1 import profile_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc
from sqlalchemy import func, select

from cli.main import build_parser
from libs.settings import CommonSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.profile.app import build
from services.profile.domain.state import FOLD_VERSION
from services.profile.storage import profile_events, profile_states
from tests.integration.polling import until
from tests.integration.test_profile_service import ago, buy, event, ingest, settings_for

pytestmark = pytest.mark.integration

ORDERS = """order_id,customer_id,email,ordered_at,channel,shipping_fee
A1,c-1,,2025-01-10,pos,0
A2,,ann@example.com,2025-02-01,web,4.95
A3,c-1,,2025-03-01,web,0
"""
LINES = """order_id,sku,quantity,unit_price,list_price
A1,SKU-1,2,40,50
A1,SKU-2,1,20,
A2,SKU-3,1,60,60
A3,SKU-4,1,100,100
"""
RETURNS = """return_id,order_id,returned_at,sku,quantity,refund_amount,method
R1,A1,2025-01-20,SKU-1,1,40,store
"""
LEDGER = """entry_id,customer_id,posted_at,type,amount,order_id
L1,c-1,2025-02-10,refund,-15,A1
L2,c-1,2025-02-11,write_off,5,
"""


@pytest.fixture
async def served(serve, database_url, tmp_path):
    identity = IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path))
    server, _ = await serve(build_identity(identity))
    app = build(settings_for(database_url, tmp_path, f"127.0.0.1:{server.port}"))
    profile_server, channel = await serve(app)
    return f"127.0.0.1:{profile_server.port}", pb_grpc.ProfileServiceStub(channel), app


async def run(*argv: str) -> int:
    args = build_parser().parse_args(["profile", *argv])
    return await args.func(args)


async def stored_events(app) -> int:
    async with app.parts["engine"].connect() as connection:
        return await connection.scalar(select(func.count()).select_from(profile_events))


async def test_erp_import_is_idempotent_resumable_and_nets_out_refunds(served, tmp_path, capsys):
    target, stub, app = served
    files = []
    for kind, text in (("orders", ORDERS), ("lines", LINES), ("returns", RETURNS), ("ledger", LEDGER)):
        (tmp_path / f"{kind}.csv").write_text(text)
        files += [f"--{kind}", str(tmp_path / f"{kind}.csv")]
    checkpoint = tmp_path / "progress.json"

    assert await run("import", *files, "--target", target, "--batch", "2") == 0
    assert "accepted 6, duplicates 0, rejected 0" in capsys.readouterr().out
    assert await stored_events(app) == 6
    digest_run = await run("import", *files, "--target", target, "--checkpoint", str(checkpoint), "--batch", "4")
    assert digest_run == 0 and "accepted 0, duplicates 6" in capsys.readouterr().out
    saved = json.loads(checkpoint.read_text())
    assert saved["acknowledged"] == 6
    # An interrupted run: only the first 4 events were acknowledged, so a new run sends the last 2.
    checkpoint.write_text(json.dumps({"digest": saved["digest"], "acknowledged": 4}))
    assert await run("import", *files, "--target", target, "--checkpoint", str(checkpoint)) == 0
    out = capsys.readouterr().out
    assert "resuming after 4 acknowledged events" in out and "accepted 0, duplicates 2" in out
    assert await stored_events(app) == 6  # re-importing changed nothing

    traits = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)).profile.traits
    assert (traits.total_spend, traits.order_count) == (200.0, 2)
    assert (traits.return_count, traits.ledger_refunds, traits.write_offs) == (1, 15.0, 5.0)
    assert traits.net_value == pytest.approx(200.0 - 40.0 - 15.0 - 5.0)
    assert traits.preferred_channel in {"pos", "web"}
    # Ann was resolved through identity by e-mail: her purchase is on the customer identity created for her.
    async with app.parts["engine"].connect() as connection:
        others = list(await connection.scalars(
            select(profile_states.c.customer_id).where(profile_states.c.customer_id != "c-1")))
    assert len(others) == 1
    ann = (await stub.GetProfile(pb.GetProfileRequest(customer_id=others[0]), timeout=5)).profile.traits
    assert (ann.total_spend, ann.net_value, ann.shipping_paid_share) == (60.0, 60.0, 1.0)


async def test_a_file_with_bad_rows_imports_the_rest_and_fails_the_command(served, tmp_path, capsys):
    target, _, app = served
    (tmp_path / "ledger.csv").write_text(LEDGER + "L3,c-2,2025-02-12,refund,abc,\n")
    assert await run("import", "--ledger", str(tmp_path / "ledger.csv"), "--target", target) == 1
    captured = capsys.readouterr()
    assert "accepted 2" in captured.out and "amount: not a number: 'abc'" in captured.err
    assert await stored_events(app) == 2


async def test_replay_streams_history_in_date_order_and_again_changes_nothing(served, tmp_path, capsys):
    target, stub, app = served
    history = tmp_path / "history.csv"
    history.write_text("cust,when,amount\nc-9,2025-05-03,30\nc-9,2025-05-01,10\nc-8,2025-05-02,20\n")
    argv = ("replay", str(history), "--map", "customer_id=cust", "--map", "date=when", "--target", target)
    assert await run(*argv, "--batch", "1") == 0
    assert "accepted 3, duplicates 0" in capsys.readouterr().out
    assert await run(*argv, "--speed", "1e9") == 0
    assert "accepted 0, duplicates 3" in capsys.readouterr().out
    traits = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-9"), timeout=5)).profile.traits
    assert (traits.total_spend, traits.order_count, traits.last_purchase_at.ToDatetime().day) == (40.0, 2, 3)


async def test_segments_apply_from_a_file(served, tmp_path, capsys):
    target, stub, _ = served
    path = tmp_path / "segments.toml"
    path.write_text('[[segments]]\nname = "vip"\nexpression = "net_value >= 100.0"\ndescription = "big"\n'
                    '[[segments]]\nname = "lapsed"\nexpression = "days_since_last_purchase > 90"\n')
    assert await run("segments", "apply", str(path), "--target", target) == 0
    assert await run("segments", "apply", str(path), "--target", target) == 0  # the same file: nothing to put
    path.write_text(path.read_text().replace('"big"', '"bigger"'))
    assert await run("segments", "apply", str(path), "--target", target) == 0
    out = capsys.readouterr().out
    assert "vip v1: 0 members" in out and "vip v1: unchanged" in out and "vip v2: 0 members" in out
    listed = await stub.ListSegments(pb.ListSegmentsRequest(), timeout=5)
    assert [(s.name, s.version) for s in listed.segments] == [("lapsed", 1), ("vip", 2)]
    path.write_text('[[segments]]\nname = "bad"\nexpression = "nope"\n')
    assert await run("segments", "apply", str(path), "--target", target) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


async def test_segments_history_lists_every_version_and_rollback_puts_an_earlier_one_again(served, tmp_path, capsys):
    target, stub, _ = served
    for expression in ("order_count >= 1", "order_count >= 5"):
        await stub.PutSegment(pb.PutSegmentRequest(segment=pb.Segment(name="buyers", expression=expression)),
                              timeout=5)
    assert await run("segments", "rollback", "buyers", "1", "--target", target) == 0
    assert "buyers v3: the definition of v1" in capsys.readouterr().out
    assert await run("segments", "history", "buyers", "--target", target) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["v3", "v2", "v1"]
    assert lines[0].endswith("(current)") and "order_count >= 1" in lines[0] and "order_count >= 5" in lines[1]

    assert await run("segments", "rollback", "buyers", "7", "--target", target) == 1
    assert "buyers has no version 7" in capsys.readouterr().err
    assert await run("segments", "rollback", "buyers", "3", "--target", target) == 0
    assert "buyers v3: unchanged (the current version)" in capsys.readouterr().out
    await stub.DeleteSegment(pb.DeleteSegmentRequest(name="buyers"), timeout=5)
    assert await run("segments", "history", "buyers", "--target", target) == 0
    assert capsys.readouterr().out.startswith("buyers: deleted\nv3 ")
    assert await run("segments", "rollback", "buyers", "2", "--target", target) == 0  # restores a deleted one
    assert "buyers v4: the definition of v2" in capsys.readouterr().out
    assert await run("segments", "history", "nobody", "--target", target) == 1
    assert "NOT_FOUND: segment 'nobody' was never put" in capsys.readouterr().err


async def older_release_state(app, customer_id: str) -> None:
    """Store the customer's state as the release before fold versions did: no version, no refunds' days."""
    async with app.parts["engine"].begin() as connection:
        stored = await connection.scalar(
            select(profile_states.c.state).where(profile_states.c.customer_id == customer_id))
        assert stored.pop("fold_version") == FOLD_VERSION
        stored.pop("deduction_times", None), stored.pop("deduction_amounts", None)
        await connection.execute(
            profile_states.update()
            .where(profile_states.c.customer_id == customer_id)
            .values(state=stored, version=profile_states.c.version + 1))  # as a save by that release would


async def stored_state(app, customer_id: str) -> dict:
    async with app.parts["engine"].connect() as connection:
        return await connection.scalar(
            select(profile_states.c.state).where(profile_states.c.customer_id == customer_id))


async def ingest_with_a_refund(stub, prefix: str) -> None:
    """c-1 buys for 100.0 and gets 30.0 back five days later; c-2 buys for 20.0."""
    await ingest(
        stub,
        event(f"{prefix}-1", when=ago(days=10), purchase=buy((1, 100.0, 100.0))),
        event(f"{prefix}-2", when=ago(days=5), product_return=pb.ProductReturn(
            order_id="o-1", lines=[pb.ReturnLine(sku="SKU-1", quantity=1, refund_amount=30.0)],
            method=pb.RETURN_METHOD_MAIL)),
        event(f"{prefix}-3", customer_id="c-2", when=ago(days=1), purchase=buy((1, 20.0, 20.0))),
    )


async def test_refold_rebuilds_profiles_from_their_events_named_or_all_page_by_page(served, capsys):
    target, stub, app = served
    await ingest_with_a_refund(stub, "r")
    await stub.PutSegment(pb.PutSegmentRequest(segment=pb.Segment(name="buyers", expression="order_count >= 1")),
                          timeout=5)
    before = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)).profile
    await older_release_state(app, "c-1")  # what a refold is for

    assert await run("refold", "c-1", "c-nobody", "--target", target) == 0
    assert "profiles rebuilt from their events: 1" in capsys.readouterr().out  # c-nobody: none before, none after
    async with app.parts["engine"].connect() as connection:
        rebuilt = await connection.scalar(select(profile_states.c.state).where(profile_states.c.customer_id == "c-1"))
        ids = set(await connection.scalars(select(profile_states.c.customer_id)))
    assert rebuilt["deduction_amounts"] == [30.0] and ids == {"c-1", "c-2"}
    after = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)).profile
    assert after.traits.net_spend_30d == 70.0 and after.traits.total_spend == before.traits.total_spend
    assert list(after.segments) == list(before.segments)  # a membership that still holds keeps its "since"

    assert await run("refold", "--all", "--page-size", "1", "--target", target) == 0
    assert "profiles rebuilt from their events: 2" in capsys.readouterr().out
    assert await run("refold", "c-1", "--all", "--target", target) == 1
    assert "INVALID_ARGUMENT: customer_ids: name the customers or set all" in capsys.readouterr().err


async def test_an_upgrade_rebuilds_states_folded_by_an_older_release_by_itself(served, serve, database_url, tmp_path):
    _, stub, app = served
    await ingest_with_a_refund(stub, "u")
    untouched = await stored_state(app, "c-2")
    await older_release_state(app, "c-1")
    # An event folded onto the outdated state leaves it outdated (it still lacks the older refund's day).
    await ingest(stub, event("u-4", when=ago(days=2), purchase=buy((1, 10.0, 10.0))))
    assert (await stored_state(app, "c-1"))["fold_version"] == 0
    outdated = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)).profile
    assert outdated.traits.net_spend_30d == 110.0  # the 30.0 refund is missing: what the rebuild corrects

    lineage = app.parts["lineage"]
    assert await lineage.refold_outdated() == 1  # c-2 is current: left alone
    assert await lineage.refold_outdated() == 0
    rebuilt = await stored_state(app, "c-1")
    assert rebuilt["fold_version"] == FOLD_VERSION and rebuilt["deduction_amounts"] == [30.0]
    assert await stored_state(app, "c-2") == untouched
    after = (await stub.GetProfile(pb.GetProfileRequest(customer_id="c-1"), timeout=5)).profile
    assert after.traits.net_spend_30d == 80.0 and after.traits.order_count == 2

    # A replica (re)started on the same database checks at start-up, without being asked (identity is not
    # needed for it: the target here answers nothing).
    await older_release_state(app, "c-1")
    await serve(build(settings_for(database_url, tmp_path, "127.0.0.1:1")))

    async def rebuilt_again() -> bool:
        return (await stored_state(app, "c-1")).get("fold_version") == FOLD_VERSION

    await until(rebuilt_again)
