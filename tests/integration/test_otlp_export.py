"""A service process started as in production exports its spans and metrics over OTLP/gRPC, and flushes on SIGTERM.

The collector is a real gRPC server implementing the OTLP trace and metrics services, in this test process; the
service is `python -m services.inventory` with NEXTBEST_OTLP_ENDPOINT pointing at it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nextbest.inventory.v1 import inventory_service_pb2 as pb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as pb_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

pytestmark = pytest.mark.integration


class Collector(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    """Keeps every OTLP export it receives."""

    def __init__(self) -> None:
        self.spans: list = []
        self.metrics: list = []

    async def Export(self, request, context):  # both services name their one RPC Export
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            for resource in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                self.spans += [(service, s) for scope in resource.scope_spans for s in scope.spans]
            return trace_service_pb2.ExportTraceServiceResponse()
        for resource in request.resource_metrics:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            self.metrics += [(service, m) for scope in resource.scope_metrics for m in scope.metrics]
        return metrics_service_pb2.ExportMetricsServiceResponse()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def wait_serving(channel: grpc.aio.Channel, process: subprocess.Popen) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(150):
        assert process.poll() is None, "the service exited during start-up"
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the service did not become SERVING")


async def test_a_service_process_exports_traces_and_metrics_over_otlp(tmp_path):
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)
    collector_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXTBEST_", "OTEL_"))}
    env.update(
        NEXTBEST_DATA_DIR=str(tmp_path),
        NEXTBEST_INVENTORY_PORT=str(port),
        NEXTBEST_OTLP_ENDPOINT=f"http://127.0.0.1:{collector_port}",
        NEXTBEST_LOG_LEVEL="WARNING",
    )
    process = subprocess.Popen([sys.executable, "-m", "services.inventory"], env=env, stderr=subprocess.PIPE)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel, process)
            stub = pb_grpc.InventoryServiceStub(channel)
            await stub.CheckAvailability(pb.CheckAvailabilityRequest(skus=["NO-SUCH-SKU"]), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.CheckAvailability(pb.CheckAvailabilityRequest(), timeout=5)
        process.send_signal(signal.SIGTERM)  # a graceful stop flushes the batched spans and the last metrics
        _, stderr = await asyncio.to_thread(process.communicate, timeout=30)
        assert process.returncode == 0, stderr.decode()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
        await server.stop(0)

    span_names = {(service, span.name) for service, span in collector.spans}
    assert ("nextbest-inventory", "/nextbest.inventory.v1.InventoryService/CheckAvailability") in span_names
    durations = [m for service, m in collector.metrics if m.name == "nextbest.rpc.server.duration"]
    assert durations and all(service == "nextbest-inventory" for service, _ in collector.metrics)
    statuses = {
        {a.key: a.value.string_value for a in point.attributes}["rpc.grpc.status_code"]: point.count
        for metric in durations
        for point in metric.histogram.data_points
        if any(a.value.string_value == "CheckAvailability" for a in point.attributes)
    }
    assert statuses == {"OK": 1, "INVALID_ARGUMENT": 1}
