"""The same-run baseline: the shape of Decide with nothing else — a front server that fans out to two backend
servers in parallel (as decision -> scoring + inventory) and answers, each server in its own process.

Minimal and honest: plain grpc.aio servers (no interceptors, tracing, health or database), generic handlers on raw
bytes, ~200-byte messages to the backends and a prebuilt ~200-byte DecideResponse (PrioritizeCallResponse) back,
so the generator parses answers exactly as from the mesh. It registers under the decision service's method names,
so the same prebuilt requests and the same load generator drive it. It measures what gRPC plus Python asyncio
cost on this machine for one fan-out hop; the mesh's ratio to it is what the services add on top. RecordOutcome
is answered by the front alone (one hop, as the decision service's write).

Run: `python -m cli.bench.baseline backend --port P` and
`python -m cli.bench.baseline front --port P --backend HOST:P1 --backend HOST:P2`. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from nextbest.decision.v1 import decision_service_pb2 as decision_pb

from libs.server import run_loop

BACKEND_SERVICE = "nextbest.bench.v1.Backend"
BACKEND_CALL = f"/{BACKEND_SERVICE}/Call"
DECISION_SERVICE = "nextbest.decision.v1.DecisionService"
MESSAGE = bytes(range(200))
#: When the client sends no deadline.
DEFAULT_TIMEOUT = 1.0


def decide_reply() -> bytes:
    """A plausible one-offer answer of about 200 bytes."""
    return decision_pb.DecideResponse(
        decision_id="0" * 32,
        customer_id="c_baseline0000000000",
        offers=[decision_pb.RankedOffer(
            offer_id="BASELINE-OFFER", name="Baseline offer of the same size", rank=1, score=0.5,
            propensity=0.25, value=20.0, lever=1.0, reason_codes=["baseline", "fan_out"],
        )],
        catalogue_version="baseline",
        model_version="baseline",
    ).SerializeToString()


def prioritize_reply() -> bytes:
    return decision_pb.PrioritizeCallResponse(
        decision_id="0" * 32, customer_id="c_baseline0000000000", priority=50,
        tier=decision_pb.CALL_TIER_PRIORITY, reasons=["baseline", "fan_out"],
        next_best_action=decision_pb.RankedOffer(offer_id="BASELINE-OFFER", name="Baseline offer", rank=1),
    ).SerializeToString()


def _handler(service: str, methods: dict) -> grpc.GenericRpcHandler:
    # No (de)serialisers: requests and answers are raw bytes.
    return grpc.method_handlers_generic_handler(
        service, {name: grpc.unary_unary_rpc_method_handler(behaviour) for name, behaviour in methods.items()}
    )


async def _serve(port: int, handler: grpc.GenericRpcHandler) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)


async def serve_backend(port: int) -> None:
    async def call(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return MESSAGE

    await _serve(port, _handler(BACKEND_SERVICE, {"Call": call}))


async def serve_front(port: int, backends: list[str]) -> None:
    channels = [grpc.aio.insecure_channel(target) for target in backends]
    calls = [channel.unary_unary(BACKEND_CALL) for channel in channels]
    decided, prioritized = decide_reply(), prioritize_reply()
    recorded = decision_pb.RecordOutcomeResponse().SerializeToString()

    async def fan_out(context: grpc.aio.ServicerContext) -> None:
        timeout = context.time_remaining() or DEFAULT_TIMEOUT
        await asyncio.gather(*(call(MESSAGE, timeout=timeout) for call in calls))

    async def decide(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await fan_out(context)
        return decided

    async def prioritize_call(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await fan_out(context)
        return prioritized

    async def record_outcome(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return recorded

    try:
        await _serve(port, _handler(DECISION_SERVICE, {
            "Decide": decide, "PrioritizeCall": prioritize_call, "RecordOutcome": record_outcome,
        }))
    finally:
        for channel in channels:
            await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cli.bench.baseline", description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("front", "backend"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", action="append", default=[], help="host:port of a backend (front only)")
    args = parser.parse_args()
    if args.role == "front":
        run_loop(serve_front(args.port, args.backend))
    else:
        run_loop(serve_backend(args.port))


if __name__ == "__main__":
    main()
