"""Identity's lineage journal over gRPC on real SQLite and PostgreSQL: what Merge, Unmerge and Forget append (in
their own transactions, nothing for a refused or repeated call), paging with ListLineage, and the guarantee the
profile's cursor relies on: an entry never becomes visible before one with a smaller seq."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from nextbest.common.v1 import common_pb2 as common
from nextbest.identity.v1 import identity_service_pb2 as pb
from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc

from libs.protoconv import utcnow
from libs.settings import CommonSettings
from services.identity.app import build
from services.identity.domain import LineageKind
from services.identity.settings import IdentitySettings
from services.identity.storage import append_lineage

pytestmark = pytest.mark.integration

STEWARD = {"reason": "duplicate account", "actor": "steward-9"}


@pytest.fixture
async def identity(serve, database_url, tmp_path):
    app = build(IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path)))
    _, channel = await serve(app)
    return pb_grpc.IdentityServiceStub(channel), app


async def create(stub, email: str) -> str:
    identifier = common.Identifier(type=common.IDENTIFIER_TYPE_EMAIL, value=email)
    return (await stub.Resolve(pb.ResolveRequest(identifiers=[identifier], create_if_missing=True))).customer_id


async def journal(stub, after_seq: int = 0, limit: int = 0) -> list[pb.LineageEntry]:
    return list((await stub.ListLineage(pb.ListLineageRequest(after_seq=after_seq, limit=limit))).entries)


async def test_merge_unmerge_and_forget_are_journaled_in_order_and_paged(identity):
    stub, _ = identity
    a, b, c = [await create(stub, f"{name}@example.com") for name in ("al", "bo", "cy")]
    assert await journal(stub) == []
    merge = await stub.Merge(pb.MergeRequest(survivor_customer_id=a, merged_customer_id=b, **STEWARD))
    with pytest.raises(grpc.aio.AioRpcError):  # refused (b is merged already): nothing is journaled
        await stub.Merge(pb.MergeRequest(survivor_customer_id=c, merged_customer_id=b, **STEWARD))
    await stub.Unmerge(pb.UnmergeRequest(merge_id=merge.merge_id, **STEWARD))
    await stub.Forget(pb.ForgetRequest(customer_id=c, **STEWARD))
    again = await stub.Forget(pb.ForgetRequest(customer_id=c, **STEWARD))
    assert not again.erased_now  # a repeated erasure changes nothing, and journals nothing

    entries = await journal(stub)
    assert [(e.kind, e.merge_id, e.survivor_customer_id, e.merged_customer_id, e.customer_id) for e in entries] == [
        (pb.LINEAGE_KIND_MERGE, merge.merge_id, a, b, ""),
        (pb.LINEAGE_KIND_UNMERGE, merge.merge_id, a, b, ""),
        (pb.LINEAGE_KIND_FORGET, "", "", "", c),
    ]
    seqs = [e.seq for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert all(e.HasField("recorded_at") for e in entries)
    # Paging: after a seq, at most `limit`.
    assert [e.seq for e in await journal(stub, after_seq=seqs[0], limit=1)] == [seqs[1]]
    assert await journal(stub, after_seq=seqs[-1]) == []


async def test_list_lineage_rejects_negative_cursors_and_limits(identity):
    stub, _ = identity
    for request, field in ((pb.ListLineageRequest(after_seq=-1), "after_seq"), (pb.ListLineageRequest(limit=-5), "limit")):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ListLineage(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(field)


async def test_an_entry_is_never_visible_before_an_earlier_seq_commits(identity):
    """The gap a follower could skip forever: seq N+1 committed while N is still in flight. Appends are serialised
    until commit, so a Merge racing an open append waits, and draws its seq only after N is visible."""
    stub, app = identity
    a, b = await create(stub, "gap-a@example.com"), await create(stub, "gap-b@example.com")
    engine = app.parts["engine"]
    async with engine.connect() as connection:
        await append_lineage(connection, LineageKind.FORGET, utcnow(), customer_id="c_in_flight")  # not committed yet
        merge = asyncio.ensure_future(
            stub.Merge(pb.MergeRequest(survivor_customer_id=a, merged_customer_id=b, **STEWARD), timeout=30)
        )
        await asyncio.sleep(0.5)  # ample time for the Merge to commit, were it not held back
        assert not merge.done()
        assert await journal(stub) == []  # neither is visible: nothing for a follower to move past
        await connection.commit()
    await merge
    entries = await journal(stub)
    assert [e.kind for e in entries] == [pb.LINEAGE_KIND_FORGET, pb.LINEAGE_KIND_MERGE]
    assert entries[0].seq < entries[1].seq
