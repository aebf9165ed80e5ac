"""StreamEvents' flow control over real gRPC and PostgreSQL: while the server cannot apply (a row lock holds its
first batch), the producer's writes stop completing once HTTP/2's window is full; they go on when it applies."""

from __future__ import annotations

import asyncio

import pytest
from nextbest.common.v1 import common_pb2 as common
from nextbest.profile.v1 import profile_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc
from sqlalchemy import select

from services.profile.app import build
from services.profile.storage import profile_states
from tests.integration.test_profile_service import event, ingest, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

BATCH = 1000
QUERY = "q" * 500  # ~0.55 MB a message


def message(n: int) -> pb.StreamEventsRequest:
    return pb.StreamEventsRequest(events=[
        event(f"m{n}-{i}", customer_id="c-free", search=pb.Search(query=QUERY, results=1)) for i in range(BATCH)
    ])


async def test_a_producer_faster_than_the_database_waits_in_its_writes(serve, postgres_url, tmp_path):
    app = build(settings_for(postgres_url, tmp_path, "127.0.0.1:1", max_batch=BATCH))
    _, channel = await serve(app)
    stub = pb_grpc.ProfileServiceStub(channel)
    await ingest(stub, event("seed", customer_id="c-locked", login=pb.Login(channel=common.CHANNEL_WEB)))

    call = stub.StreamEvents(timeout=120)
    written = 0
    async with app.parts["engine"].begin() as blocker:
        await blocker.execute(
            select(profile_states.c.customer_id).where(profile_states.c.customer_id == "c-locked").with_for_update()
        )
        await call.write(pb.StreamEventsRequest(events=[
            event("blocked", customer_id="c-locked", login=pb.Login(channel=common.CHANNEL_WEB))]))
        while written < 200:  # 110 MB: more than any window gRPC grants
            # Not cancelled when it waits (that would cancel the call): it completes once the server reads on.
            pending = asyncio.ensure_future(call.write(message(written)))
            done, _ = await asyncio.wait([pending], timeout=2.0)
            if not done:
                break
            written += 1
        assert 0 < written < 200  # the window took some messages, then the producer was held
        assert not pending.done()
    # The lock is gone: the server applies and reads on, and the held write completes.
    await pending
    await call.write(message(written + 1))
    await call.done_writing()
    reply = await call
    assert (reply.accepted, reply.duplicates, len(reply.rejected)) == (1 + (written + 2) * BATCH, 0, 0)
