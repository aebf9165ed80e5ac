"""Measures Score latency server-side: `python -m services.scoring.score_bench [--rates 200,500] [--seconds 20]`.

Trains a model of realistic size (40 features, 200 trees of depth 5: batch_bench's `spread` model) into a temporary
folder and starts the real scoring service on port 0 (SQLite registry) in a child process. The child records metrics
in memory: the service's own `nextbest.rpc.server.duration` histogram (libs/metrics.py RpcMetricsInterceptor, the
same instrument production exports), with 50 µs buckets up to 10 ms instead of the exported coarse ones. The parent
drives `Score` (one customer, 30 customer features, --candidates offers with 10 offer features each: as one packed
column block, what the decision sends, or with `--form map` as a map per candidate) open loop at each fixed rate
for --seconds, then reads the histogram's Score/OK counts for that phase from the child and reports
p50/p90/p99/p99.9 by interpolation inside the 50 µs bucket.

Server-side means the handler's time as the interceptor sees it: validation, matrix assembly, the model call and
building the response; not protobuf parsing/serialisation nor time a request waits for the event loop. The
client-side round trip is printed alongside for reference (it includes the load generator, which shares the CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from services.scoring.batch_bench import train_bench_model

#: Histogram bucket bounds (seconds): 50 µs steps to 10 ms, then coarse ones.
BOUNDS = [round(0.00005 * i, 6) for i in range(1, 201)] + [0.02, 0.05, 0.1, 0.5, 1.0, 5.0]
DURATION = "nextbest.rpc.server.duration"
CUSTOMER_FEATURES = 30


# ---------------------------------------------------------------------------------------------- the child process


def _score_histogram(reader) -> dict:
    """Cumulative bucket counts of successful Score calls so far."""
    data = reader.get_metrics_data()
    counts = [0] * (len(BOUNDS) + 1)
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != DURATION:
                    continue
                for point in metric.data.data_points:
                    attributes = point.attributes
                    if attributes.get("rpc.method") == "Score" and attributes.get("rpc.grpc.status_code") == "OK":
                        counts = [a + b for a, b in zip(counts, point.bucket_counts, strict=True)]
    return {"counts": counts}


async def _serve(port_file: Path) -> None:
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    from libs.server import GrpcServer
    from libs.settings import load_settings
    from services.scoring.app import build
    from services.scoring.settings import ScoringSettings

    reader = InMemoryMetricReader()
    view = View(instrument_name=DURATION, aggregation=ExplicitBucketHistogramAggregation(BOUNDS))
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader], views=[view]))
    server = GrpcServer(build(load_settings(ScoringSettings)))
    port_file.write_text(str(await server.start()))
    try:
        # One line on stdin asks for the histogram; end of input stops the service.
        while await asyncio.to_thread(sys.stdin.readline):
            print(json.dumps(_score_histogram(reader)), flush=True)
    finally:
        await server.stop()


# --------------------------------------------------------------------------------------------------- the parent


def _requests(names: list[str], candidates: int, count: int, form: str) -> list:
    """`count` requests; the offer features as one packed block (`offer_columns` + row-major `offer_values`) or,
    with `form` "map", as a map per candidate."""
    from nextbest.scoring.v1 import scoring_service_pb2 as pb

    rng = np.random.default_rng(1)
    customer, offer = names[:CUSTOMER_FEATURES], names[CUSTOMER_FEATURES:]
    out = []
    for i in range(count):
        values = rng.normal(size=(candidates, len(offer)))
        request = pb.ScoreRequest(
            customer_id=f"c-{i}",
            customer_features=dict(zip(customer, rng.normal(size=len(customer)).tolist(), strict=True)),
        )
        if form == "map":
            request.candidates.extend(
                pb.Candidate(offer_id=f"o-{j}", offer_features=dict(zip(offer, row.tolist(), strict=True)))
                for j, row in enumerate(values)
            )
        else:
            request.candidates.extend(pb.Candidate(offer_id=f"o-{j}") for j in range(candidates))
            request.offer_columns.extend(offer)
            request.offer_values.extend(values.ravel().tolist())
        out.append(request)
    return out


def _percentile(counts: list[int], q: float) -> float:
    """The q-quantile (seconds) of a bucketed histogram, linear inside the bucket."""
    total = sum(counts)
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            low = BOUNDS[i - 1] if i > 0 else 0.0
            high = BOUNDS[i] if i < len(BOUNDS) else BOUNDS[-1]
            return low + (high - low) * (rank - seen) / count
        seen += count
    return float("nan")


class _Child:
    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process

    def histogram(self) -> list[int]:
        self.process.stdin.write("snap\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["counts"]


async def _phase(stub, requests: list, rate: float, seconds: float) -> tuple[int, int, list[float]]:
    """Open loop: request i is sent at start + i / rate whether or not earlier ones answered."""
    loop = asyncio.get_running_loop()
    errors = 0
    client: list[float] = []

    async def one(request) -> None:
        nonlocal errors
        sent = time.perf_counter()
        try:
            await stub.Score(request, timeout=5)
            client.append(time.perf_counter() - sent)
        except Exception:  # noqa: BLE001 - a benchmark counts failures instead of stopping
            errors += 1

    tasks = []
    start = loop.time()
    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(requests[i % len(requests)])))
    await asyncio.gather(*tasks)
    return total, errors, client


async def _drive(port: int, child: _Child, requests: list, rates: list[float], seconds: float) -> list[dict]:
    from nextbest.scoring.v1 import scoring_service_pb2_grpc as pb_grpc

    from libs.clients import open_channel

    results = []
    async with open_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        await _phase(stub, requests, 200, 2)  # warm-up: connection, first predictions
        before = child.histogram()
        for rate in rates:
            sent, errors, client = await _phase(stub, requests, rate, seconds)
            after = child.histogram()
            counts = [a - b for a, b in zip(after, before, strict=True)]
            before = after
            ms = {f"p{q}": 1000 * _percentile(counts, q / 100) for q in (50, 90, 99, 99.9)}
            client_ms = np.percentile(np.array(client) * 1000, [50, 99]) if client else [float("nan")] * 2
            results.append(
                {
                    "rate": rate,
                    "sent": sent,
                    "errors": errors,
                    "served": sum(counts),
                    **ms,
                    "client_p50": float(client_ms[0]),
                    "client_p99": float(client_ms[1]),
                }
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="200,500", help="calls per second, one phase each (default 200,500)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    parser.add_argument("--candidates", type=int, default=20, help="offers per Score call (default 20)")
    parser.add_argument("--features", type=int, default=40, help="model features (30 customer + the rest offer)")
    parser.add_argument("--form", choices=("block", "map"), default="block",
                        help="offer features as one packed column block (default, as Decide sends them) or a map "
                        "per candidate")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the child process: write the port here
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(_serve(args.serve))
        return 0
    if args.features <= CUSTOMER_FEATURES:
        parser.error(f"--features must exceed the {CUSTOMER_FEATURES} customer features")
    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = train_bench_model(root / "models", args.features, spread=True)
        env = {
            **os.environ,
            "NEXTBEST_DATA_DIR": str(root),
            "NEXTBEST_SCORING_PORT": "0",
            "NEXTBEST_SCORING_MODELS_DIR": str(root / "models"),
            "NEXTBEST_LOG_LEVEL": "WARNING",
        }
        port_file = root / "port"
        process = subprocess.Popen(
            [sys.executable, "-m", "services.scoring.score_bench", "--serve", str(port_file)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    print("the scoring service did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            requests = _requests(names, args.candidates, 256, args.form)
            results = asyncio.run(_drive(int(port_file.read_text()), _Child(process), requests, rates, args.seconds))
        finally:
            process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.terminate()
                process.wait(timeout=10)
    print(
        f"Score, {args.candidates} candidates x {args.features} features (offer features as a {args.form}), open "
        f"loop, {args.seconds:g} s per rate; "
        "server-side = the service's nextbest.rpc.server.duration (handler time), in ms"
    )
    print(
        f"{'rate/s':>7s} {'sent':>6s} {'errors':>6s} {'p50':>6s} {'p90':>6s} {'p99':>6s} {'p99.9':>6s}   "
        f"{'client p50':>10s} {'client p99':>10s}"
    )
    for r in results:
        print(
            f"{r['rate']:7.0f} {r['sent']:6d} {r['errors']:6d} {r['p50']:6.3f} {r['p90']:6.3f} {r['p99']:6.3f} "
            f"{r['p99.9']:6.3f}   {r['client_p50']:10.3f} {r['client_p99']:10.3f}"
        )
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
