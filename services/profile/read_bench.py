"""Server-side GetProfile / GetFeatures latency under ingest: `python -m services.profile.read_bench [options]`.

1. Creates a fresh database (a throw-away PostgreSQL database next to `--database-url`'s, dropped at the end; or a
   temporary SQLite file with `--database-url sqlite`), migrates it and bulk-loads N customers: a few synthetic
   events each (views, purchases, a loyalty change, a model prediction), folded into their states in this
   process and inserted with multi-row statements, not N RPCs.
2. Starts the real profile service (`services.profile.app.build`) as a child process on port 0. The child times
   its GetProfile and GetFeatures handlers (the servicer: domain, database and protobuf work; not the network)
   and hands the samples back when it stops.
3. Drives reads at a fixed open-loop rate (`--rate`, half GetProfile with a read mask of traits, segments, model
   traits and recent activity, half GetFeatures), customers drawn from a Zipf law, while a second task ingests
   events (`--ingest-rate`, in batches of `--ingest-batch`) for customers of the same popularity (the most read
   are the most written). With `--ingest-replica` (PostgreSQL) the events go to a second profile process, as a
   deployment with an ingest replica would send them; the read replica learns of them by NOTIFY (and, unless
   `--no-share-saved-states`, refills its cache from the states the ingest replica shares).
4. Prints the server-side p50 / p99 / max per method after `--warmup` seconds, the read and ingest rates achieved,
   and checks that every accepted event is stored once and applied once (the stored orders grew by exactly the
   accepted purchases).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
LOAD_CHUNK = 2_000
READ_MASK = ["customer_id", "traits", "segments", "model_traits", "recent_activity"]


# ---------------------------------------------------------------------------------------------- the child server


def _timed(call, kept: list[float]):
    """`call` (a coroutine function), appending the milliseconds each call took to `kept`."""

    async def timed(*args):
        started = time.perf_counter()
        try:
            return await call(*args)
        finally:
            kept.append((time.perf_counter() - started) * 1000)

    return timed


async def _serve(port_file: Path, samples_file: Path) -> None:
    """The profile service with its two read handlers (and its cache misses) timed; SIGUSR1 clears the samples,
    SIGTERM ends it."""
    from libs.server import GrpcServer, freeze_startup_objects
    from libs.settings import load_settings
    from services.profile.app import build
    from services.profile.settings import ProfileSettings

    app = build(load_settings(ProfileSettings))
    servicer = app.registrations[0].servicer
    repository = app.parts["repository"]
    samples: dict[str, list[float]] = {"GetProfile": [], "GetFeatures": [], "misses": []}
    for method in ("GetProfile", "GetFeatures"):  # registered from the instance when the server starts
        setattr(servicer, method, _timed(getattr(servicer, method), samples[method]))
    # The misses' database reads on their own (the read cache's read-through), where the tail usually is.
    repository._read_through = _timed(repository._read_through, samples["misses"])
    server = GrpcServer(app, "127.0.0.1", 0, grace=1.0)
    port = await server.start()
    freeze_startup_objects()  # as a service process does (libs.server.serve)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    cache = repository.reads
    collections: list[tuple[int, float]] = []  # (generation, milliseconds) of each collection while measured
    collection_started = 0.0

    def timed_collection(phase: str, info: dict) -> None:
        nonlocal collection_started
        if phase == "start":
            collection_started = time.perf_counter()
        else:
            collections.append((info["generation"], (time.perf_counter() - collection_started) * 1000))

    gc.callbacks.append(timed_collection)

    def measure_from_now() -> None:
        for kept in samples.values():
            kept.clear()
        cache.hits = cache.misses = 0
        collections.clear()

    loop.add_signal_handler(signal.SIGUSR1, measure_from_now)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    port_file.write_text(str(port))
    await stop.wait()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    samples_file.write_text(
        json.dumps(
            {
                **samples,
                "cache": [cache.hits, cache.misses, len(cache)],
                "peak_rss_mb": peak_rss_mb,
                "gc": collections,
            }
        )
    )
    await server.stop()


# ---------------------------------------------------------------------------------------------- loading


def _customer_id(index: int) -> str:
    return f"c-{index:07d}"


def _history(index: int, rng: random.Random, now):
    """A customer's synthetic past: views, one to three purchases, maybe a loyalty change and model scores."""
    from services.profile.domain import AcceptedEvent
    from services.profile.domain import events as ev

    customer_id = _customer_id(index)
    events = []
    for n in range(rng.randint(1, 3)):
        at = now - timedelta(days=rng.uniform(1, 300))
        sku = f"SKU-{rng.randrange(500)}"
        events.append(
            AcceptedEvent(
                f"h-{index}-v{n}",
                customer_id,
                at - timedelta(minutes=5),
                "web",
                ev.ProductView(sku, rng.uniform(5, 120)),
            )
        )
        line = ev.OrderLine(
            sku, 1, round(rng.uniform(10, 200), 2), 0.0, category=rng.choice(["shoes", "coats", "bags"])
        )
        events.append(
            AcceptedEvent(
                f"h-{index}-p{n}", customer_id, at, "pos", ev.Purchase(f"o-{index}-{n}", (line,), 0.0, False, "pos", "")
            )
        )
    if rng.random() < 0.3:
        events.append(
            AcceptedEvent(
                f"h-{index}-l", customer_id, now - timedelta(days=2), "crm", ev.LoyaltyChange(100, rng.randint(1, 4))
            )
        )
    for use_case in ("lifetime_value", "churn_risk"):
        value = rng.uniform(0, 1000) if use_case == "lifetime_value" else rng.random()
        events.append(
            AcceptedEvent(
                f"h-{index}-{use_case}",
                customer_id,
                now - timedelta(days=1),
                "scoring",
                ev.ModelPrediction(use_case, "bench", "v1", value),
            )
        )
    return customer_id, events


async def _load(engine, customers: int) -> int:
    """Bulk-load the customers' events and folded states; returns the orders loaded."""
    from sqlalchemy import insert, text

    from libs.protoconv import utcnow
    from services.profile.domain import ProfileState
    from services.profile.domain.events import summarize
    from services.profile.storage import profile_events, profile_states

    now = utcnow()
    rng = random.Random(42)
    orders = 0
    for start in range(0, customers, LOAD_CHUNK):
        event_rows, state_rows = [], []
        for index in range(start, min(start + LOAD_CHUNK, customers)):
            customer_id, events = _history(index, rng, now)
            state = ProfileState()
            for event in sorted(events, key=lambda e: (e.occurred_at, e.event_id)):
                state.apply(event, now)
                event_rows.append(
                    {
                        "event_id": event.event_id,
                        "customer_id": customer_id,
                        "kind": event.kind,
                        "occurred_at": event.occurred_at,
                        "source": event.source,
                        "payload": event.payload_document(),
                        "summary": summarize(event.payload),
                        "received_at": now,
                    }
                )
            orders += state.order_count
            state_rows.append(
                {
                    "customer_id": customer_id,
                    "state": state.to_document(),
                    "first_seen_at": state.first_seen_at,
                    "updated_at": now,
                    "version": 1,
                }
            )
        async with engine.begin() as connection:
            await connection.execute(insert(profile_events), event_rows)
            await connection.execute(insert(profile_states), state_rows)
    if engine.dialect.name == "postgresql":
        # Planner statistics, as autovacuum keeps them on a live database: without them, the recent-activity
        # query of a freshly loaded table may be planned as a scan.
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("ANALYZE profile_events"))
            await connection.execute(text("ANALYZE profile_states"))
    return orders


# ---------------------------------------------------------------------------------------------- the load


def _zipf_picker(customers: int, exponent: float, seed: int):
    """Draws customer ids with Zipf popularity (rank k has weight 1/k^s), popular ranks scattered over the ids.
    The popularity order is the same for every picker (the customers who are read most are the ones who act
    most: their reads meet their own fresh writes); `seed` only varies the draws."""
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, customers + 1) ** exponent
    cumulative = np.cumsum(weights / weights.sum())
    shuffled = np.random.default_rng(0).permutation(customers)

    def pick(n: int) -> list[str]:
        ranks = np.minimum(np.searchsorted(cumulative, rng.random(n)), customers - 1)
        return [_customer_id(int(shuffled[rank])) for rank in ranks]

    return pick


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _collections(collections: list[tuple[int, float]]) -> str:
    """Count and longest pause per generation: a full collection stops every read in flight."""
    by_generation: dict[int, list[float]] = {}
    for generation, ms in collections:
        by_generation.setdefault(generation, []).append(ms)
    return ", ".join(
        f"generation {generation}: {len(pauses)} (longest {max(pauses):.1f} ms)"
        for generation, pauses in sorted(by_generation.items())
    ) or "none"


def _percentiles(samples: list[float]) -> str:
    if len(samples) < 2:
        return f"{len(samples)} samples"
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return f"p50 {cuts[49]:.2f} ms, p99 {cuts[98]:.2f} ms, max {max(samples):.2f} ms ({len(samples)} calls)"


async def _drive(port: int, ingest_port: int, options, server: subprocess.Popen) -> dict[str, float]:
    import grpc
    from google.protobuf.duration_pb2 import Duration
    from google.protobuf.field_mask_pb2 import FieldMask
    from nextbest.profile.v1 import profile_service_pb2 as pb
    from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc

    from libs.clients import open_channel
    from libs.protoconv import to_timestamp, utcnow

    reads_pick = _zipf_picker(options.customers, options.zipf, 1)
    ingest_pick = _zipf_picker(options.customers, options.zipf, 2)
    total = options.warmup + options.seconds
    counts = {
        "reads": 0,
        "read_errors": 0,
        "accepted": 0,
        "sent": 0,
        "duplicates": 0,
        "rejected": 0,
        "purchases": 0,
        "measured_reads": 0,
        "measured_accepted": 0,
    }
    errors: dict[str, int] = {}

    async with open_channel(f"127.0.0.1:{port}") as channel, open_channel(f"127.0.0.1:{ingest_port}") as writes:
        stub = pb_grpc.ProfileServiceStub(channel)
        ingest_stub = pb_grpc.ProfileServiceStub(writes)
        started = time.monotonic()
        measuring_from = started + options.warmup

        async def read(i: int, customer_id: str) -> None:
            try:
                if i % 2:
                    await stub.GetFeatures(pb.GetFeaturesRequest(customer_id=customer_id), timeout=5)
                else:
                    await stub.GetProfile(
                        pb.GetProfileRequest(customer_id=customer_id, read_mask=FieldMask(paths=READ_MASK)),
                        timeout=5,
                    )
                counts["reads"] += 1
                if time.monotonic() >= measuring_from:
                    counts["measured_reads"] += 1
            except grpc.aio.AioRpcError as exc:  # counted and reported: a failed read must not stop the load
                counts["read_errors"] += 1
                key = f"{exc.code().name}: {exc.details()}"
                errors[key] = errors.get(key, 0) + 1

        async def reads() -> None:
            pending: set[asyncio.Task] = set()
            calls = int(options.rate * total)
            customers = reads_pick(calls)
            for i in range(calls):
                delay = started + i / options.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(read(i, customers[i]))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

        async def ingest() -> None:
            # Open loop, like the reads: batches leave on schedule while earlier ones are still being applied
            # (up to --ingest-in-flight at once, as a producer with a bounded window would send them).
            batches = int(options.ingest_rate * total / options.ingest_batch)
            rng = random.Random(3)
            window = asyncio.Semaphore(options.ingest_in_flight)
            pending: set[asyncio.Task] = set()
            for b in range(batches):
                delay = started + b * options.ingest_batch / options.ingest_rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await window.acquire()
                now = to_timestamp(utcnow())
                events = []
                purchases = 0
                for k, customer_id in enumerate(ingest_pick(options.ingest_batch)):
                    event = pb.Event(
                        event_id=f"bench-{b}-{k}", customer_id=customer_id, occurred_at=now, source="bench"
                    )
                    roll = rng.random()
                    if roll < 0.7:
                        event.product_view.CopyFrom(
                            pb.ProductView(sku=f"SKU-{rng.randrange(500)}", dwell=Duration(seconds=rng.randint(1, 90)))
                        )
                    elif roll < 0.9:
                        event.cart_change.CopyFrom(
                            pb.CartChange(action=pb.CART_ACTION_ADD, sku="SKU-1", quantity=1, unit_price=10.0)
                        )
                    else:
                        purchases += 1
                        event.purchase.CopyFrom(
                            pb.Purchase(
                                order_id=f"bench-{b}-{k}",
                                lines=[pb.OrderLine(sku="SKU-1", quantity=1, unit_price=10.0, list_price=10.0)],
                            )
                        )
                    events.append(event)
                task = asyncio.create_task(send(events, purchases))
                task.add_done_callback(lambda done: (pending.discard(done), window.release()))
                pending.add(task)
            await asyncio.gather(*pending)

        async def send(events: list, purchases: int) -> None:
            reply = await ingest_stub.IngestEvents(pb.IngestEventsRequest(events=events), timeout=30)
            counts["sent"] += len(events)
            counts["accepted"] += reply.accepted
            counts["duplicates"] += reply.duplicates
            counts["rejected"] += len(reply.rejected)
            if not reply.rejected:
                counts["purchases"] += purchases
            if time.monotonic() >= measuring_from:
                counts["measured_accepted"] += reply.accepted

        async def start_measuring() -> None:
            await asyncio.sleep(options.warmup)
            server.send_signal(signal.SIGUSR1)  # drop the warm-up samples
            counts["cpu_start"] = _cpu_seconds(server.pid)

        await asyncio.gather(reads(), ingest(), start_measuring())
        counts["elapsed"] = time.monotonic() - measuring_from
        counts["cpu"] = _cpu_seconds(server.pid) - counts["cpu_start"]
    if errors:
        print(f"read errors: {errors}")
    return counts


async def _verify(engine, orders_loaded: int, counts: dict[str, float]) -> bool:
    from sqlalchemy import func, select, text

    from services.profile.storage import profile_events

    async with engine.connect() as connection:
        stored = await connection.scalar(
            select(func.count()).select_from(profile_events).where(profile_events.c.event_id.like("bench-%"))
        )
        order_count = (
            "(state->>'order_count')::int"
            if engine.dialect.name == "postgresql"
            else "json_extract(state, '$.order_count')"
        )
        orders = await connection.scalar(text(f"SELECT COALESCE(SUM({order_count}), 0) FROM profile_states"))
    applied_purchases = orders - orders_loaded
    ok = stored == counts["accepted"] == counts["sent"] and applied_purchases == counts["purchases"]
    print(
        f"check: {counts['sent']} events sent, {counts['accepted']} accepted, {stored} stored, "
        f"{counts['purchases']} purchases accepted, {applied_purchases} applied to states: "
        f"{'every accepted event stored and applied once' if ok else 'MISMATCH'}"
    )
    return ok


async def _database(url: str, tmp: Path) -> tuple[str, str | None]:
    """A fresh database: (its URL, its PostgreSQL name to drop, or None for SQLite)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    if url == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'profile-bench.db'}", None
    name = f"nextbest_read_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return make_url(url).set(database=name).render_as_string(hide_password=False), name


async def _drop(url: str, name: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    admin = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time, after the warm-up")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=500.0, help="reads per second (open loop)")
    parser.add_argument("--ingest-rate", type=float, default=1_000.0, help="events per second ingested meanwhile")
    parser.add_argument("--ingest-batch", type=int, default=50)
    parser.add_argument("--ingest-in-flight", type=int, default=4, help="most IngestEvents calls under way at once")
    parser.add_argument(
        "--ingest-replica",
        action="store_true",
        help="ingest through a second profile process (PostgreSQL): reads and writes on separate event loops",
    )
    parser.add_argument(
        "--share-saved-states",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --ingest-replica: the replicas share their saved states (NEXTBEST_PROFILE_NOTIFY_SAVED_STATES), "
        "so the reader refills what the writer changed instead of reading it again",
    )
    parser.add_argument("--zipf", type=float, default=1.1, help="popularity exponent of the customers drawn")
    parser.add_argument(
        "--database-url",
        default=DEFAULT_URL,
        help="a PostgreSQL server (a database is created next to this one and dropped), or 'sqlite'",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--samples-file", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.ingest_replica and options.database_url == "sqlite":
        parser.error("--ingest-replica needs PostgreSQL: replicas learn of each other's writes by NOTIFY")
    if options.serve:
        from libs.server import run_loop

        run_loop(_serve(options.port_file, options.samples_file))  # uvloop and the collector's thresholds, as a service
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_bench(options, Path(tmp)))


def _child(port_file: Path, samples_file: Path, env: dict[str, str]) -> subprocess.Popen:
    command = ["--serve", "--port-file", str(port_file), "--samples-file", str(samples_file)]
    return subprocess.Popen([sys.executable, "-m", "services.profile.read_bench", *command], env=env)


async def _port(child: subprocess.Popen, port_file: Path) -> int:
    """The port the child serves on once it is up; 0 if it failed to start within a minute."""
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if child.poll() is not None or time.monotonic() > deadline:
            return 0
        await asyncio.sleep(0.1)
    return int(port_file.read_text())


async def _bench(options, tmp: Path) -> int:
    from libs.db import create_engine
    from services.profile.app import migrate_schema

    url, dropped = await _database(options.database_url, tmp)
    engine = create_engine(url)
    server = ingest_server = None
    try:
        await migrate_schema(engine)
        started = time.perf_counter()
        orders = await _load(engine, options.customers)
        print(
            f"loaded {options.customers} customers ({orders} orders) in {time.perf_counter() - started:.1f} s "
            f"({engine.dialect.name})",
            flush=True,
        )
        port_file, samples_file = tmp / "port", tmp / "samples.json"
        env = {
            **os.environ,
            "NEXTBEST_PROFILE_DATABASE_URL": url,
            "NEXTBEST_PROFILE_PORT": "0",
            "NEXTBEST_DATA_DIR": str(tmp),
            "NEXTBEST_LOG_LEVEL": "WARNING",
            "NEXTBEST_PROFILE_IDENTITY_TARGET": "127.0.0.1:9",  # every event names its customer
            "NEXTBEST_PROFILE_LINEAGE_POLL_SECONDS": "3600",
            "NEXTBEST_PROFILE_SEGMENT_SWEEP_SECONDS": "0",
            "NEXTBEST_PROFILE_NOTIFY_SAVED_STATES": str(options.ingest_replica and options.share_saved_states).lower(),
        }
        server = _child(port_file, samples_file, env)
        if options.ingest_replica:
            ingest_server = _child(tmp / "ingest-port", tmp / "ingest-samples.json", env)
        ingest_port = port = await _port(server, port_file)
        if ingest_server is not None:
            ingest_port = await _port(ingest_server, tmp / "ingest-port")
        if not port or not ingest_port:
            print("the profile service did not start", file=sys.stderr)
            return 1
        counts = await _drive(port, ingest_port, options, server)
        for child in (server, ingest_server):
            if child is not None:
                child.send_signal(signal.SIGTERM)
                await asyncio.to_thread(child.wait, 30)
        samples = json.loads(samples_file.read_text())
        elapsed = counts["elapsed"]
        print(
            f"server-side, {options.customers} customers, {options.rate:.0f} reads/s offered for "
            f"{options.seconds:.0f} s while ingesting (on {engine.dialect.name}):"
        )
        for method in ("GetProfile", "GetFeatures"):
            print(f"  {method}: {_percentiles(samples[method])}")
        print(f"  both: {_percentiles(samples['GetProfile'] + samples['GetFeatures'])}")
        print(f"  of which cache misses, their database read: {_percentiles(samples['misses'])}")
        hits, misses, entries = samples["cache"]
        print(
            f"read cache: {hits / max(1, hits + misses):.1%} hits ({hits} hits, {misses} misses; {entries} profiles "
            f"held at the end); peak RSS {samples['peak_rss_mb']:.0f} MB"
        )
        print(
            f"the service process used {counts['cpu'] / elapsed:.0%} of one core while measured, "
            f"{sum(ms for _, ms in samples['gc']) / 1000 / elapsed:.1%} of the time in garbage collections: "
            + _collections(samples["gc"])
        )
        print(
            f"reads achieved {counts['measured_reads'] / elapsed:.0f}/s ({counts['read_errors']} failed); "
            f"ingest achieved {counts['measured_accepted'] / elapsed:.0f} events/s "
            f"(offered {options.ingest_rate:.0f}/s)"
        )
        return 0 if await _verify(engine, orders, counts) else 1
    finally:
        for child in (server, ingest_server):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
        await engine.dispose()
        if dropped:
            await _drop(options.database_url, dropped)


if __name__ == "__main__":
    sys.exit(main())
