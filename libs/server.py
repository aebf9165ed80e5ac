"""gRPC server bootstrap shared by every service.

One place for: the grpc.aio server, the health service (NOT_SERVING until warm-up is done, NOT_SERVING again on
shutdown), reflection, the interceptors (tracing, metrics, authentication, then error mapping), bounded
concurrency and request size (load shedding, not unbounded queues), graceful draining shutdown and signal
handling. A service provides a `ServiceApp` from its wiring function; this module runs it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvloop
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from libs.auth.server import AuthInterceptor, KeystoreWatcher, load_keystore
from libs.errors import InvalidArgument, NextBestError
from libs.metrics import RpcMetricsInterceptor, meter, metrics_active, setup_metrics
from libs.settings import ServiceSettings
from libs.telemetry import current_trace_id, setup_logging, setup_tracing, tracing_active
from libs.tls import TlsMaterial, guard_plaintext_bind, load_tls

log = logging.getLogger("nextbest.server")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Registration:
    """One servicer to register: the generated `add_*_to_server` function, the servicer, its full name."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: object
    full_name: str


@dataclass
class ServiceApp:
    """A wired service: servicers plus warm-up and clean-up hooks (migrations, caches, models, channels)."""

    name: str
    registrations: Sequence[Registration]
    on_start: Callable[[], Awaitable[None]] = _nothing
    on_stop: Callable[[], Awaitable[None]] = _nothing
    #: Called when shutdown begins, before in-flight calls drain: ends long-lived streams (change feeds).
    on_drain: Callable[[], None] = lambda: None
    #: Anything the wiring function wants tests to reach (repositories, engines); never used by the server.
    parts: dict[str, Any] = field(default_factory=dict)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors to their gRPC status; anything unexpected becomes INTERNAL with only a trace id."""

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        deserializer = _decoding(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(handler.unary_unary, method),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _guard_unary(handler.stream_unary, method),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(handler.unary_stream, method),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _guard_stream(handler.stream_stream, method),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )


class _Undecodable:
    """Stands in for request bytes that are not the method's message, so the guarded handler can refuse them."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _decoding(deserializer):
    """The handler's deserializer, returning _Undecodable instead of raising: grpc would answer UNKNOWN."""
    if deserializer is None:
        return None

    def deserialize(raw: bytes):
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return _Undecodable(exc)

    return deserialize


def _decoded(request_or_iterator):
    """The request (or request stream) as the servicer should see it; undecodable bytes are INVALID_ARGUMENT."""
    if isinstance(request_or_iterator, _Undecodable):
        raise InvalidArgument("request", f"cannot be decoded: {request_or_iterator.error}")
    if hasattr(request_or_iterator, "__aiter__"):
        return _decoded_stream(request_or_iterator)
    return request_or_iterator


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(exc, NextBestError):
        await context.abort(exc.code, exc.message)
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        # A dependency was down or slow and the service chose not to degrade: say so, with the same status.
        await context.abort(exc.code(), f"dependency failed: {exc.details()}")
    if isinstance(exc, NotImplementedError):
        # A servicer that does not implement a method of its contract (the generated base class raises this).
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this server")
    trace_id = current_trace_id()
    log.error("unhandled error in %s", method, exc_info=exc, extra={"method": method})
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (trace {trace_id or 'n/a'})")


def _guard_unary(behavior, method: str):
    async def guarded(request_or_iterator, context):
        try:
            return await behavior(_decoded(request_or_iterator), context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - this IS the one place that maps errors
            await _abort_for(exc, context, method)

    return guarded


def _guard_stream(behavior, method: str):
    async def guarded(request_or_iterator, context) -> AsyncIterator[Any]:
        try:
            async for response in behavior(_decoded(request_or_iterator), context):
                yield response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort_for(exc, context, method)

    return guarded


class GrpcServer:
    """Runs one ServiceApp on one port: `await start()` returns the bound port, `await stop()` drains."""

    def __init__(
        self,
        app: ServiceApp,
        host: str = "127.0.0.1",
        port: int = 0,
        grace: float = 5.0,
        *,
        tls: TlsMaterial | None = None,
        allow_plaintext_bind: bool = False,
        keystore: KeystoreWatcher | None = None,
        max_concurrent_rpcs: int | None = None,
        max_request_bytes: int = MAX_MESSAGE_BYTES,
        max_connection_age_seconds: float = 0,
    ) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.grace = grace
        #: None: plaintext, on loopback only unless `allow_plaintext_bind` (libs.tls.guard_plaintext_bind).
        self.tls = tls
        self.allow_plaintext_bind = allow_plaintext_bind
        #: None: no authentication (libs.auth); else every call but health and reflection needs an API key.
        self.keystore = keystore
        #: Calls beyond this many at once are shed with RESOURCE_EXHAUSTED instead of queueing without bound.
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.max_request_bytes = max_request_bytes
        self.max_connection_age_seconds = max_connection_age_seconds
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()

    async def start(self) -> int:
        if self.tls is None:
            guard_plaintext_bind(self.host, self.allow_plaintext_bind, self.app.name)
        server = grpc.aio.server(
            interceptors=[
                *([aio_server_interceptor()] if tracing_active() else []),
                *([RpcMetricsInterceptor(meter("nextbest.rpc"))] if metrics_active() else []),
                *([AuthInterceptor(self.keystore)] if self.keystore else []),
                ErrorInterceptor(),
            ],
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
            options=[
                ("grpc.so_reuseport", 0),  # a taken port must fail loudly, not be silently shared
                ("grpc.max_receive_message_length", self.max_request_bytes),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # GOAWAY after this age: clients reconnect and re-resolve; the grace is unbounded so long-lived
                # WatchChanges streams are never cut (that would reset the decision caches).
                *(
                    [("grpc.max_connection_age_ms", int(self.max_connection_age_seconds * 1000))]
                    if self.max_connection_age_seconds
                    else []
                ),
            ],
        )
        names = [r.full_name for r in self.app.registrations]
        for registration in self.app.registrations:
            registration.add_to_server(registration.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.host}:{self.requested_port}"
        if self.tls is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, self.tls.server_credentials())
        if self.port == 0:
            raise SystemExit(f"{self.app.name}: could not bind {self.host}:{self.requested_port}")
        self._server = server
        await server.start()
        await self.app.on_start()  # warm-up: only then do health checks say SERVING
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        transport = self.tls.mode if self.tls else "plaintext"
        log.info("%s serving %s on %s:%d", self.app.name, transport, self.host, self.port, extra={"port": self.port})
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        self.app.on_drain()
        await self._server.stop(self.grace)
        self._server = None
        await self.app.on_stop()
        log.info("%s stopped", self.app.name)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(app: ServiceApp, settings: ServiceSettings) -> None:
    """Run a service until SIGINT/SIGTERM, then drain in-flight calls and clean up."""
    server = GrpcServer(
        app,
        settings.common.host,
        settings.port,
        settings.common.shutdown_grace_seconds,
        tls=load_tls(settings.common),
        allow_plaintext_bind=settings.common.allow_plaintext_bind,
        keystore=load_keystore(settings.common, app.name),
        max_concurrent_rpcs=settings.common.max_concurrent_rpcs,
        max_request_bytes=settings.common.max_request_bytes,
        max_connection_age_seconds=settings.common.max_connection_age_seconds,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        freeze_startup_objects()
        await stop.wait()
    finally:
        await server.stop()


def freeze_startup_objects() -> None:
    """What start-up built (modules, models, the catalogue, compiled statements) lives as long as the process: out
    of the collector's generations, later full collections need not walk it again."""
    gc.collect()
    gc.freeze()


#: Allocations before the cyclic garbage collector's young-generation pass (CPython's default is 700). At the
#: default, the profile service under ingest collected ~210 times a second and spent a third of its time there
#: (read_bench, measured with gc.callbacks: 34% of the run, 7,668 events/s); at 20,000, 3% (8,129 events/s, the
#: offered rate). Our objects rarely form cycles (reference counting frees them), so memory barely moves.
GC_THRESHOLDS = (20_000, 10, 10)


def run_loop(main: Coroutine[Any, Any, Any]) -> Any:
    """Run a process's main coroutine on uvloop (measured here, ~18% less CPU per gRPC call, client + server,
    than asyncio's default loop) with the collector's thresholds above. Every process of the mesh and of the
    benchmark's baseline and load generator uses it."""
    gc.set_threshold(*GC_THRESHOLDS)
    return uvloop.run(main)


def run_service(build: Callable[[Any], ServiceApp], settings: ServiceSettings) -> None:
    """Entry point of a service process: logging, tracing, metrics, wiring, serving."""
    setup_logging(settings.service_name, settings.common)
    setup_tracing(settings.service_name, settings.common)
    setup_metrics(settings.service_name, settings.common)
    run_loop(serve(build(settings), settings))
