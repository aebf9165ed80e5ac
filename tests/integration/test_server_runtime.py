"""The shared server bootstrap: health after warm-up, error mapping, INTERNAL without stack traces, draining."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nextbest.identity.v1 import identity_service_pb2 as pb
from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc

from libs.errors import InvalidArgument, NotFound
from libs.server import GrpcServer, Registration, ServiceApp

pytestmark = pytest.mark.integration
FULL_NAME = "nextbest.identity.v1.IdentityService"


class ScriptedIdentity(pb_grpc.IdentityServiceServicer):
    """A servicer whose behaviour each test chooses, to exercise the runtime around it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()  # a slow call has reached the servicer

    async def Resolve(self, request, context):
        kind = request.identifiers[0].value if request.identifiers else ""
        if kind == "bad":
            raise InvalidArgument("identifiers[0].value", "not an e-mail address")
        if kind == "missing":
            raise NotFound("customer c-1 not found")
        if kind == "boom":
            raise RuntimeError("secret internals /etc/passwd")
        if kind == "slow":
            self.entered.set()
            await self.release.wait()
        return pb.ResolveResponse(customer_id="c-1")

    async def WatchChanges(self, request, context):
        yield pb.WatchChangesResponse()  # subscribed
        await self.release.wait()
        yield pb.WatchChangesResponse(customer_ids=["c-1"])


def _request(value: str) -> pb.ResolveRequest:
    return pb.ResolveRequest(identifiers=[{"type": 1, "value": value}])


async def test_health_is_not_serving_until_warm_up_finishes(serve):
    warmed = asyncio.Event()

    async def warm_up() -> None:
        await warmed.wait()

    app = ServiceApp("scripted", [Registration(pb_grpc.add_IdentityServiceServicer_to_server, ScriptedIdentity(), FULL_NAME)], on_start=warm_up)
    server = GrpcServer(app, "127.0.0.1", 0, grace=0.5)
    starting = asyncio.create_task(server.start())
    await asyncio.sleep(0.2)
    # The port is bound while warming up, and probes see NOT_SERVING.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=FULL_NAME), timeout=2)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        warmed.set()
        await starting
        reply = await health.Check(health_pb2.HealthCheckRequest(service=FULL_NAME), timeout=2)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await server.stop()


async def test_domain_errors_map_to_their_status_and_unexpected_ones_to_internal(serve):
    servicer = ScriptedIdentity()
    _, channel = await serve(ServiceApp("scripted", [Registration(pb_grpc.add_IdentityServiceServicer_to_server, servicer, FULL_NAME)]))
    stub = pb_grpc.IdentityServiceStub(channel)
    assert (await stub.Resolve(_request("ok"), timeout=2)).customer_id == "c-1"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.Resolve(_request("bad"), timeout=2)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.details() == "identifiers[0].value: not an e-mail address"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.Resolve(_request("missing"), timeout=2)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as boom:
        await stub.Resolve(_request("boom"), timeout=2)
    assert boom.value.code() == grpc.StatusCode.INTERNAL
    assert "passwd" not in boom.value.details() and "Traceback" not in boom.value.details()
    assert boom.value.details().startswith("internal error (trace ")


async def test_stop_drains_in_flight_calls_and_reports_not_serving():
    servicer = ScriptedIdentity()
    app = ServiceApp("scripted", [Registration(pb_grpc.add_IdentityServiceServicer_to_server, servicer, FULL_NAME)])
    server = GrpcServer(app, "127.0.0.1", 0, grace=3)
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.IdentityServiceStub(channel)
        in_flight = asyncio.ensure_future(stub.Resolve(_request("slow"), timeout=5))
        # Wait for the call to be running (on a busy machine connecting alone can take longer than any fixed sleep).
        await asyncio.wait_for(servicer.entered.wait(), timeout=5)
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.1)
        servicer.release.set()
        reply = await in_flight  # the call that was running when stop began still completes
        assert reply.customer_id == "c-1"
        await stopping


async def test_a_method_the_servicer_lacks_is_unimplemented_not_internal(serve):
    _, channel = await serve(ServiceApp("scripted", [Registration(pb_grpc.add_IdentityServiceServicer_to_server, ScriptedIdentity(), FULL_NAME)]))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await pb_grpc.IdentityServiceStub(channel).GetCustomer(pb.GetCustomerRequest(customer_id="c-1"), timeout=2)
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_connection_age_recycles_connections_but_never_cuts_an_open_stream():
    servicer = ScriptedIdentity()
    app = ServiceApp("scripted", [Registration(pb_grpc.add_IdentityServiceServicer_to_server, servicer, FULL_NAME)])
    server = GrpcServer(app, "127.0.0.1", 0, grace=0.5, max_connection_age_seconds=0.2)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.IdentityServiceStub(channel)
            stream = stub.WatchChanges(pb.WatchChangesRequest())
            assert list((await stream.read()).customer_ids) == []
            for _ in range(4):  # calls across several connection ages: the client reconnects transparently
                assert (await stub.Resolve(_request("ok"), timeout=2)).customer_id == "c-1"
                await asyncio.sleep(0.2)
            servicer.release.set()
            assert list((await asyncio.wait_for(stream.read(), 2)).customer_ids) == ["c-1"]  # still the same stream
    finally:
        await server.stop()
