"""Server-side Resolve latency with many customers loaded: `python -m services.identity.bench [--customers N]`.

Starts the identity service on a real in-process gRPC server (port 0; migrations, the stored match model, the
heap frozen after start-up as `libs.server.serve` does), loads N synthetic customers (an e-mail, a phone and a
trait record each; bulk inserts, not N Resolves) into a fresh database (a temporary SQLite file, or
`--database-url`, which must be empty), estimates the match model, then times Resolve for (1) a known identifier
and (2) person traits only (a noisy copy of a stored person's traits, no identifier), three ways:

- `domain`: `IdentityService.resolve` called directly (storage and matching, no protobuf);
- `servicer`: inside the real server, from the servicer method's entry to its return (protobuf mapping, domain,
  storage; not the interceptors, the transport or the client);
- `round trip`: a gRPC client in the same process (everything above plus interceptors, HTTP/2 and the client,
  which shares the CPU and event loop with the server).

Calls are sequential, so the figures are latency without queueing. Prints p50/p90/p99/max in milliseconds and
the cyclic garbage collector's pauses during the timed calls.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from nextbest.common.v1 import common_pb2
from nextbest.identity.v1 import identity_service_pb2 as pb
from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc
from sqlalchemy import insert

from libs.errors import NotFound
from libs.protoconv import utcnow
from libs.server import GrpcServer
from libs.settings import CommonSettings
from services.identity.app import build
from services.identity.domain import IdentifierKind, RawIdentifier
from services.identity.estimation import estimate_and_store
from services.identity.matching.blocking import blocking_keys
from services.identity.matching.synth import generate
from services.identity.matching.traits import TRAIT_FIELDS, normalise
from services.identity.settings import IdentitySettings
from services.identity.storage import _trait_row, customers, identifiers, trait_records

CHUNK = 5_000


async def load(engine, rows: list[dict[str, str]]) -> None:
    now = utcnow()
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        customer_rows, identifier_rows, trait_rows = [], [], []
        for index, row in enumerate(chunk, start):
            customer_id = f"c_{index:020d}"
            customer_rows.append({"id": customer_id, "created_at": now})
            identifier_rows.append(
                {"type": "email", "value": f"person{index}@example.com", "customer_id": customer_id, "linked_at": now}
            )
            identifier_rows.append(
                {"type": "phone", "value": f"+1555{index:07d}", "customer_id": customer_id, "linked_at": now}
            )
            person = normalise(row)
            trait_rows.append(_trait_row(customer_id, person, blocking_keys(person), now))
        async with engine.begin() as connection:
            await connection.execute(insert(customers), customer_rows)
            await connection.execute(insert(identifiers), identifier_rows)
            await connection.execute(insert(trait_records), trait_rows)


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return f"p50 {cuts[49]:.2f} ms, p90 {cuts[89]:.2f} ms, p99 {cuts[98]:.2f} ms, max {max(samples):.2f} ms"


class GcPauses:
    """Pauses of the cyclic garbage collector while it is installed (gc.callbacks)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((time.perf_counter() - self._started) * 1000)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_) -> None:
        gc.callbacks.remove(self)

    def summary(self) -> str:
        return f"{len(self.pauses)} collections, longest {max(self.pauses, default=0.0):.2f} ms"


def timed_servicer(servicer, samples: list[float]) -> None:
    """Time the servicer's Resolve from entry to return, inside the real server (set before it registers)."""
    resolve = servicer.Resolve

    async def Resolve(request, context):  # noqa: N802 - the contract's method name
        started = time.perf_counter()
        try:
            return await resolve(request, context)
        finally:
            samples.append((time.perf_counter() - started) * 1000)

    servicer.Resolve = Resolve


async def run(calls: int, call: Callable[[int], Awaitable[str]]) -> tuple[list[float], dict[str, int]]:
    """`calls` sequential calls of `call(n)` (returns an outcome label); their latencies and outcome counts."""
    samples, outcomes = [], {}
    for n in range(calls):
        started = time.perf_counter()
        outcome = await call(n)
        samples.append((time.perf_counter() - started) * 1000)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return samples, outcomes


async def main(customers_count: int, calls: int, database_url: str | None, estimate: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'identity-bench.db'}"
        app = build(IdentitySettings(database_url=url, port=0, common=CommonSettings(data_dir=Path(tmp))))
        servicer_samples: list[float] = []
        timed_servicer(app.registrations[0].servicer, servicer_samples)
        server = GrpcServer(app, "127.0.0.1", 0, grace=1.0)
        port = await server.start()  # migrations and warm-up
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.IdentityServiceStub(channel)
        try:
            await bench(app, stub, servicer_samples, customers_count, calls, estimate)
        finally:
            await channel.close()
            await server.stop()


async def bench(app, stub, servicer_samples: list[float], customers_count: int, calls: int, estimate: bool) -> None:
    engine, service, repository = app.parts["engine"], app.parts["service"], app.parts["repository"]
    # Twice the records, one per true person: customers are distinct people (duplicates are the queries).
    rows = generate(customers_count * 2, seed=42)
    people: dict[str, dict[str, str]] = {}
    queries: dict[str, dict[str, str]] = {}
    for row in rows:
        (queries if row["entity_id"] in people else people).setdefault(row["entity_id"], row)
    stored = list(people.values())[:customers_count]
    started = time.perf_counter()
    await load(engine, stored)
    print(f"loaded {len(stored)} customers in {time.perf_counter() - started:.1f}s ({engine.dialect.name})")
    if estimate:
        started = time.perf_counter()
        model = await estimate_and_store(repository, utcnow())
        service.use_model(model)
        print(f"estimated the match model in {time.perf_counter() - started:.1f}s")
    rng = random.Random(7)
    index_of = {row["entity_id"]: i for i, row in enumerate(stored)}
    noisy = [
        ({name: row[name] for name in TRAIT_FIELDS if name != "phone"}, f"c_{index_of[row['entity_id']]:020d}")
        for entity, row in queries.items()
        if entity in index_of
    ]
    emails = [f"person{rng.randrange(len(stored))}@example.com" for _ in range(calls)]
    picks = [rng.choice(noisy) for _ in range(calls)]
    del rows, people, queries, stored, index_of  # the harness's data is not the server's heap

    async def domain_by_identifier(n: int) -> str:
        return (await service.resolve([RawIdentifier(IdentifierKind.EMAIL, emails[n])], False)).method.value

    async def domain_by_traits(n: int) -> str:
        traits, expected = picks[n]
        try:
            result = await service.resolve([], False, traits)
        except NotFound:  # below the lower threshold: an answer here, not a failure
            return "not_found"
        return "wrong customer" if result.customer_id and result.customer_id != expected else result.method.value

    email_type = common_pb2.IDENTIFIER_TYPE_EMAIL

    async def grpc_by_identifier(n: int) -> str:
        request = pb.ResolveRequest(identifiers=[common_pb2.Identifier(type=email_type, value=emails[n])])
        return pb.MatchMethod.Name((await stub.Resolve(request, timeout=5)).match_method)

    async def grpc_by_traits(n: int) -> str:
        traits, expected = picks[n]
        try:
            result = await stub.Resolve(pb.ResolveRequest(traits=pb.PersonTraits(**traits)), timeout=5)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return "not_found"
        if result.customer_id and result.customer_id != expected:
            return "wrong customer"
        return pb.MatchMethod.Name(result.match_method)

    # Warm-up (untimed): the first calls after the bulk load read cold pages and compile statements.
    await run(min(calls, 200), domain_by_identifier)
    await run(min(calls, 200), domain_by_traits)
    for label, call in (("by identifier", domain_by_identifier), ("by person traits", domain_by_traits)):
        with GcPauses() as pauses:
            samples, outcomes = await run(calls, call)
        print(f"domain     Resolve {label} ({calls} calls): {percentiles(samples)}; GC {pauses.summary()}")
        if label == "by person traits":
            print(f"  outcomes {outcomes}")
    for label, call in (("by identifier", grpc_by_identifier), ("by person traits", grpc_by_traits)):
        servicer_samples.clear()
        with GcPauses() as pauses:
            samples, outcomes = await run(calls, call)
        print(f"servicer   Resolve {label} ({calls} calls): {percentiles(servicer_samples)}")
        print(f"round trip Resolve {label} ({calls} calls): {percentiles(samples)}; GC {pauses.summary()}")
        if label == "by person traits":
            print(f"  outcomes {outcomes}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--database-url", help="an empty database, e.g. postgresql+asyncpg://postgres@127.0.0.1/bench")
    parser.add_argument("--no-estimate", action="store_true", help="keep the built-in default m/u")
    options = parser.parse_args()
    asyncio.run(main(options.customers, options.calls, options.database_url, not options.no_estimate))
