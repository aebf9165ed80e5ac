"""`nextbest bench`: load benchmark of the whole mesh against a same-run gRPC fan-out baseline (issue 3).

Starts the five services on the bench's own seeded data (reused when already seeded) and ports, a minimal
front + two backends baseline, and a load generator in its own processes; drives both with the same open-loop
rates and closed-loop steps (70% web / 20% POS / 10% call centre, Zipf-skewed customers, RecordOutcome for a share
of decisions, an IngestEvents stream alongside on the mesh); optionally injects faults; writes JSON + PNG to
results/ and prints a compact table with PASS/FAIL against the targets. Modules:

- `schedule` open-loop send times and scheduler, closed-loop workers
- `workload` customers, popularity, prebuilt requests, ingest events
- `driver` the generator processes
- `baseline` the baseline servers
- `launcher` starting and stopping the services and baseline processes
- `dataset` the seeded bench data (reuse / seed) and the ingest verification query
- `proxy` the delay proxy for fault injection; `faults` the fault scenario and its analysis
- `procfs` CPU and memory from /proc; `stats` samples and percentiles; `report` JSON, tables, chart
- `config` presets and flags; `runner` one run, start to finish
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def _customer_count(text: str) -> int:
    value = int(text)
    if value < 5:
        raise argparse.ArgumentTypeError("at least 5 customers (the demo showcase needs them)")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="load benchmark of the whole mesh against a same-run baseline (results/ gets JSON + PNG)",
        description="Full mode (default, under 15 min once seeded): 10,000 customers, open loop 50/100/200/400 "
        "decisions/s for 20 s each, closed loop 1..32 workers, 5,000 ingested events/s alongside, then faults. "
        "--quick: 2,000 customers and short steps, no faults (under 2 min once seeded). SQLite unless "
        "NEXTBEST_DATABASE_URL points to PostgreSQL or --postgres is given (the bench then uses its own database "
        "nextbest_bench_<customers> on that server). Seeded data is reused; --fresh seeds again.",
    )
    bench.add_argument("--quick", action="store_true", help="the quick preset (2,000 customers, short steps)")
    bench.add_argument("--faults", action="store_true", help="run only the fault scenario")
    bench.add_argument("--no-faults", action="store_true", help="skip the fault scenario of the full run")
    bench.add_argument("--postgres", action="store_true",
                       help="PostgreSQL on 127.0.0.1:5432 (database nextbest_bench_<customers>)")
    bench.add_argument("--customers", type=_customer_count, help="customers to seed (default: 10,000; quick 2,000)")
    bench.add_argument("--seed", type=int, default=42, help="random seed of the demo retailer and the workload")
    bench.add_argument("--fresh", action="store_true", help="delete the bench's seeded data and seed again")
    bench.add_argument("--rates", type=float, nargs="+", metavar="RATE", help="open-loop decisions/s levels")
    bench.add_argument("--workers", type=int, nargs="+", metavar="N", help="closed-loop concurrency steps")
    bench.add_argument("--ingest-rate", type=float, help="IngestEvents events/s alongside (default 5000; 0: off)")
    bench.add_argument("--warmup", type=_seconds, metavar="SECONDS",
                       help="seconds of load before measuring, per target: 50 decisions/s, the fault run at its own "
                       "rate (default 5; quick 2). The short default includes a replica's cold caches in the figures; "
                       "about 60 reaches steady state")
    bench.add_argument("--fault-rate", type=float, default=100.0,
                       help="decisions/s of the open-loop run the faults happen in (default 100)")
    bench.add_argument("--poisson", action="store_true", help="Poisson arrivals instead of a fixed rate")
    bench.add_argument("--p99-bound-ms", type=float, default=100.0,
                       help="p99 bound of a sustainable closed-loop step (default 100 ms)")
    bench.add_argument("--port-base", type=int, default=53050,
                       help="services on BASE..BASE+4, fault proxy BASE+5, baseline BASE+10..BASE+12")
    bench.add_argument("--data-root", type=Path, default=Path("var/bench"), help="where seeded bench data lives")
    bench.add_argument("--results-dir", type=Path, default=Path("results"), help="where JSON and PNG go")
    # For the smoke test: shorter phases, a faster (worse) model, faults added to a quick run.
    bench.add_argument("--duration-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    bench.add_argument("--train-impressions", type=int, help=argparse.SUPPRESS)
    bench.add_argument("--with-faults", action="store_true", help=argparse.SUPPRESS)
    bench.set_defaults(func=_bench)


async def _bench(args: argparse.Namespace) -> int:
    from .config import from_args
    from .runner import run

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        return await run(from_args(args), say)
    except RuntimeError as exc:  # a process that did not start or died; everything started is stopped by now
        print(f"nextbest bench: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancelled the run, whose clean-up has stopped everything
        print("nextbest bench: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
