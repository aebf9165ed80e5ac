"""The bench's knobs: quick and full presets, overridden by flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path

from .faults import FaultPlan
from .workload import BUDGETS, Mix


@dataclass(frozen=True)
class BenchConfig:
    mode: str  # "quick", "full" or "faults"
    customers: int
    seed: int = 42
    postgres: bool = False
    fresh: bool = False
    data_root: Path = Path("var/bench")
    results_dir: Path = Path("results")
    port_base: int = 53050
    open_rates: tuple[float, ...] = (50, 100, 200, 400)
    closed_steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    open_seconds: float = 20.0
    closed_seconds: float = 10.0
    warmup_seconds: float = 5.0
    ingest_rate: float = 5000.0
    ingest_batch: int = 500
    #: Deadline of one IngestEvents batch; a phase's stream ends when its last batches are answered or time out.
    ingest_timeout: float = 10.0
    outcome_share: float = 0.1
    poisson: bool = False
    #: Closed-loop steps count as sustainable only with decision p99 at most this, 0 errors, <= 1% degraded.
    p99_bound_ms: float = 100.0
    max_degraded: float = 0.01
    run_load: bool = True
    run_faults: bool = True
    faults: FaultPlan = FaultPlan()
    mix: Mix = field(default_factory=Mix)
    #: Requests planned (and cycled through) by the generator.
    planned_requests: int = 20_000
    startup_timeout: float = 120.0
    #: Seeding only: simulated impressions the model is trained on (None: the seeder's default).
    train_impressions: int | None = None

    @property
    def budgets(self) -> dict[str, float]:
        return dict(BUDGETS)


QUICK = BenchConfig(
    mode="quick", customers=2_000, open_rates=(50, 100, 200, 400), closed_steps=(1, 4, 16), open_seconds=4.0,
    closed_seconds=3.0, warmup_seconds=2.0, ingest_timeout=5.0, run_faults=False, planned_requests=6_000,
)
FULL = BenchConfig(mode="full", customers=10_000)


def from_args(args: argparse.Namespace) -> BenchConfig:
    preset = QUICK if args.quick else FULL
    scale = args.duration_scale
    config = replace(
        preset,
        mode="faults" if args.faults else preset.mode,
        customers=args.customers or preset.customers,
        seed=args.seed,
        postgres=args.postgres,
        fresh=args.fresh,
        data_root=args.data_root,
        results_dir=args.results_dir,
        port_base=args.port_base,
        open_rates=tuple(args.rates) if args.rates else preset.open_rates,
        closed_steps=tuple(args.workers) if args.workers else preset.closed_steps,
        open_seconds=max(0.5, preset.open_seconds * scale),
        closed_seconds=max(0.5, preset.closed_seconds * scale),
        warmup_seconds=args.warmup if args.warmup is not None else max(0.5, preset.warmup_seconds * scale),
        ingest_rate=args.ingest_rate if args.ingest_rate is not None else preset.ingest_rate,
        poisson=args.poisson,
        p99_bound_ms=args.p99_bound_ms,
        run_load=not args.faults,
        run_faults=args.faults or (preset.run_faults and not args.no_faults) or args.with_faults,
        faults=replace(FaultPlan().scaled(scale) if scale < 1 else FaultPlan(), rate=args.fault_rate),
        train_impressions=args.train_impressions,
    )
    return config
