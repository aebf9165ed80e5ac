"""OpenTelemetry metrics: the process's meter provider, the RPC latency interceptor, and `meter()` for services.

Metrics are on only when an OTLP endpoint is set (exported every `metrics_export_seconds`, like traces). When they
are off, `meter()` hands out a no-op meter and the server leaves the interceptor out, both decided once at wiring
time, so a measurement costs nothing on the hot path. Attributes are bounded by design: method names, status codes,
channels, offer ids and reasons; never a customer id or anything a customer typed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import metrics
from opentelemetry.metrics import Meter, NoOpMeter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

from libs.settings import CommonSettings

#: Latency buckets (seconds) around the mesh's budgets: sub-millisecond hops up to multi-second batch calls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def setup_metrics(service: str, settings: CommonSettings) -> MeterProvider | None:
    """Install the process-wide meter provider exporting over OTLP/gRPC, when an endpoint is set."""
    current = metrics.get_meter_provider()
    if isinstance(current, MeterProvider):  # already installed in this process
        return current
    if not settings.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=settings.otlp_endpoint),
        export_interval_millis=settings.metrics_export_seconds * 1000,
    )
    provider = MeterProvider(
        resource=Resource.create({"service.name": f"nextbest-{service}"}), metric_readers=[reader]
    )
    metrics.set_meter_provider(provider)
    return provider


def metrics_active() -> bool:
    """Whether this process records metrics: only then are instruments real and the RPC interceptor installed."""
    return isinstance(metrics.get_meter_provider(), MeterProvider)


def meter(name: str) -> Meter:
    """A meter for `name` when metrics are on, else a no-op one (call at wiring time, not per request)."""
    return metrics.get_meter(name) if metrics_active() else NoOpMeter(name)


def status_name(code: grpc.StatusCode | int | None) -> str:
    """"OK" for None, else the status code's name (grpc.aio reports it as an enum or as its number)."""
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _STATUS_NAMES.get(code, str(code))


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Records every call's duration per service, method and status code, and counts the calls that failed.

    Installed before the error interceptor, so it sees the status a domain error was mapped to.
    """

    def __init__(self, meter: Meter) -> None:
        self._duration = meter.create_histogram(
            "nextbest.rpc.server.duration",
            unit="s",
            description="Time to handle one RPC (a stream: until it ends), per service, method and status code.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self._errors = meter.create_counter(
            "nextbest.rpc.server.errors",
            unit="{call}",
            description="RPCs that ended with a status other than OK, per service, method and status code.",
        )

    def _record(self, attributes: dict[str, str], started: float, code: grpc.StatusCode | int | None) -> None:
        status = status_name(code)
        attributes = {**attributes, "rpc.grpc.status_code": status}
        self._duration.record(time.perf_counter() - started, attributes)
        if status != "OK":
            self._errors.add(1, attributes)

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        attributes = {"rpc.service": service, "rpc.method": method}
        for kind, make, wrap in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler, self._unary),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, self._unary),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, self._stream),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, self._stream),
        ):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(
                    wrap(behavior, attributes),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _unary(self, behavior: Callable[..., Any], attributes: dict[str, str]) -> Callable[..., Any]:
        async def measured(request_or_iterator, context):
            started = time.perf_counter()
            code: grpc.StatusCode | int | None = grpc.StatusCode.UNKNOWN
            try:
                response = await behavior(request_or_iterator, context)
                code = context.code()
                return response
            except grpc.aio.AbortError:
                code = context.code()
                raise
            except BaseException:  # measured, then re-raised untouched
                code = grpc.StatusCode.CANCELLED if context.cancelled() else grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._record(attributes, started, code)

        return measured

    def _stream(self, behavior: Callable[..., Any], attributes: dict[str, str]) -> Callable[..., Any]:
        async def measured(request_or_iterator, context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code: grpc.StatusCode | int | None = grpc.StatusCode.UNKNOWN
            try:
                async for response in behavior(request_or_iterator, context):
                    yield response
                code = context.code()
            except grpc.aio.AbortError:
                code = context.code()
                raise
            except BaseException:
                code = grpc.StatusCode.CANCELLED if context.cancelled() else grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._record(attributes, started, code)

        return measured
