"""One bench run, start to finish: data set, mesh, baseline, generators, phases, faults, verification, report.

Every process the run starts (services, baseline servers, generator children, the seeding child) is stopped in
the `finally` of `run`, whatever happened — Ctrl-C included (asyncio.run cancels the run, the finally blocks run).
"""

from __future__ import annotations

import os
import platform
import secrets
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict
from datetime import UTC, datetime

import orjson

from .config import BenchConfig
from .dataset import Dataset, bench_database_url, count_bench_events, postgres_settings, prepare
from .driver import GENERATOR_NICE, DriverProcess, IngestStats, Phase, PhaseResult, decision_main, ingest_main
from .faults import analyse, inject
from .launcher import Baseline, Mesh, busy_ports, mesh_env, ports_from
from .procfs import Meter, Usage, machine_busy_seconds, memory_mb, postgres_cpu_seconds
from .proxy import DelayProxy
from .report import (
    METHOD,
    SCHEMA,
    SERVICES,
    add_ratios,
    draw_chart,
    evaluate_targets,
    ingest_summary,
    max_sustainable,
    memory_summary,
    phase_record,
    render,
    verification_record,
)
from .workload import ingest_subjects, load_customers, load_skus, plan_requests

INGEST_SUBJECTS = 20_000


class _Run:
    """The state of one run; `phases` collects the phase records as they complete."""

    def __init__(self, config: BenchConfig, out: Callable[[str], None]) -> None:
        self.config = config
        self.out = out
        self.run_id = secrets.token_hex(4)
        self.ports = ports_from(config.port_base)
        self.phases: list[dict] = []
        self.peak_rss: dict[str, float] = {}
        self.dataset: Dataset | None = None
        self.mesh: Mesh | None = None
        self.baseline: Baseline | None = None
        self.generator: DriverProcess | None = None
        self.ingester: DriverProcess | None = None
        self.proxy: DelayProxy | None = None
        self.ingest_stats: list[IngestStats] = []
        self.faults: dict | None = None
        self.verification: dict | None = None
        self.postgres_settings: dict[str, str] | None = None

    def say(self, message: str) -> None:
        self.out(f"[bench] {message}")

    # ----------------------------------------------------------------------------------------------- setup

    async def setup(self, stack: AsyncExitStack) -> None:
        config = self.config
        busy = busy_ports(list(self.ports.values()))
        if busy:
            raise SystemExit(f"ports already in use: {busy} (another bench? choose --port-base)")
        database_url = bench_database_url(config.customers, config.postgres, os.environ)
        self.dataset = await prepare(config.data_root, config.customers, config.seed, database_url, config.fresh,
                                     self.say, config.train_impressions)
        if self.dataset.backend == "postgresql":
            self.postgres_settings = await postgres_settings(self.dataset.run_url)
        customers = await load_customers(self.dataset.service_url("identity"))
        skus = load_skus(self.dataset.run_dir / "catalogue")
        plan = plan_requests(customers, skus, config.planned_requests, config.seed, config.mix)
        self.say(f"{len(customers):,} customers, {len(skus)} SKUs; {len(plan):,} requests prebuilt")

        self.proxy = DelayProxy("127.0.0.1", self.ports["inventory"])
        await self.proxy.start(port=self.ports["proxy"])
        stack.push_async_callback(self.proxy.stop)
        log_dir = self.dataset.run_dir / "logs"
        self.mesh = Mesh(self._mesh_env(inventory_via_proxy=not config.run_load), self.ports, log_dir)
        stack.push_async_callback(self.mesh.stop)
        started = time.monotonic()
        await self.mesh.start(config.startup_timeout)
        self.say(f"mesh healthy in {time.monotonic() - started:.1f}s on ports {config.port_base}..{config.port_base + 4}"
                 f" (logs in {log_dir})")
        self._note_peaks()  # start-up peaks (migrations, model load) count towards the memory target

        self.generator = DriverProcess("decision-generator", decision_main, plan, self.run_id)
        stack.callback(self.generator.stop)
        await self.generator.start()
        if config.run_load:
            self.baseline = Baseline(self.ports, log_dir)
            stack.push_async_callback(self.baseline.stop)
            await self.baseline.start()
            if config.ingest_rate > 0:
                subjects = ingest_subjects(customers, INGEST_SUBJECTS, config.seed, config.mix.zipf_s)
                self.ingester = DriverProcess("ingest-generator", ingest_main, self.mesh.target("profile"),
                                              subjects, skus, self.run_id, config.ingest_batch,
                                              config.mix.ingest_by_identifier, config.ingest_timeout)
                stack.callback(self.ingester.stop)
                await self.ingester.start()

    def _mesh_env(self, inventory_via_proxy: bool) -> dict[str, str]:
        dataset = self.dataset
        return mesh_env(dataset.run_dir.resolve(), dataset.run_url, self.ports, inventory_via_proxy)

    def _note_peaks(self, usage: dict[str, Usage] | None = None) -> None:
        """Fold the services' peak RSS into the run's: from a phase's usage, else read now (start-up peaks)."""
        if usage is None:
            peaks = {name: (memory_mb(pid) or {}).get("peak_rss_mb") for name, pid in self.mesh.pids().items()}
        else:
            peaks = {name: usage[name].peak_rss_mb for name in SERVICES if name in usage}
        for name, peak in peaks.items():
            if peak is not None:
                self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), peak)

    # ----------------------------------------------------------------------------------------------- phases

    def _pids(self, target: str) -> dict[str, int]:
        pids = dict(self.mesh.pids() if target == "mesh" else self.baseline.pids())
        pids["generator"] = self.generator.pid
        if target == "mesh" and self.ingester:
            pids["ingest_generator"] = self.ingester.pid
        pids["runner"] = os.getpid()
        return pids

    def _meter(self, target: str) -> Meter:
        """The target's processes, the generators, the runner, the whole machine and PostgreSQL if used."""
        counters = {"machine": machine_busy_seconds}
        if self.dataset.backend == "postgresql":
            counters["postgres"] = postgres_cpu_seconds
        return Meter(self._pids(target), counters)

    async def measure(self, target: str, phase: Phase) -> PhaseResult:
        """Run one phase with the ingest stream alongside (mesh only); record it."""
        ingest = target == "mesh" and self.ingester is not None
        meter = self._meter(target)
        if ingest:
            self.ingester.send(self.config.ingest_rate)
        meter.begin(time.monotonic())
        result = await self.generator.ask(phase)
        usage = meter.end(time.monotonic())
        stats = await self.ingester.ask("stop") if ingest else None
        if stats is not None:
            self.ingest_stats.append(stats)
        level = phase.rate if phase.shape == "open" else phase.concurrency
        record = phase_record(target, phase.shape, level, result, usage, self.config.budgets, stats)
        self.phases.append(record)
        if target == "mesh":
            self._note_peaks(usage)
        d = record["decisions"]
        extra = f", ingest {record['ingest']['achieved_rate']:,.0f} ev/s" if stats else ""
        self.say(f"{target:8s} {phase.shape:6s} {level:>5g}: {d['throughput']:7.1f}/s  p50 {d['latency_ms']['p50']:6.1f}"
                 f"  p99 {d['latency_ms']['p99']:7.1f} ms  errors {d['errors']}  degraded {d['degraded']}{extra}")
        return result

    def _targets(self) -> list[tuple[str, str]]:
        return [("baseline", self.baseline.target), ("mesh", self.mesh.target("decision"))]

    async def load(self) -> None:
        config = self.config
        for _, target in self._targets():
            await self.generator.ask(Phase(target, "open", config.warmup_seconds, rate=50, seed=1))
        self.say(f"warmed up ({config.warmup_seconds:g}s at 50/s each); open loop "
                 f"{', '.join(f'{r:g}' for r in config.open_rates)}/s, {config.open_seconds:g}s each")
        for n, rate in enumerate(config.open_rates):
            for name, target in self._targets():
                await self.measure(name, Phase(target, "open", config.open_seconds, rate=rate, poisson=config.poisson,
                                               seed=100 + n, outcome_share=config.outcome_share))
        self.say(f"closed loop {', '.join(map(str, config.closed_steps))} workers, {config.closed_seconds:g}s each")
        for n, workers in enumerate(config.closed_steps):
            for name, target in self._targets():
                await self.measure(name, Phase(target, "closed", config.closed_seconds, concurrency=workers,
                                               seed=200 + n, outcome_share=config.outcome_share))
        if self.ingester:
            await self.verify_ingest()

    async def verify_ingest(self) -> None:
        failed = [batch for stats in self.ingest_stats for batch, _, _ in stats.failed]
        counted = await count_bench_events(self.dataset.service_url("profile"), self.run_id, failed)
        self.verification = verification_record(sum(s.accepted for s in self.ingest_stats),
                                                sum(s.duplicates for s in self.ingest_stats), counted)
        v = self.verification
        self.say(f"ingest check: accepted {v['accepted']:,}, present {v['present']:,}, duplicates {v['duplicates']}, "
                 f"missing {v['missing']}")

    async def run_faults(self) -> None:
        config, plan = self.config, self.config.faults
        if config.run_load:  # the mesh ran with a direct inventory target: route it through the proxy now
            await self.mesh.stop_service("decision")
            self.mesh.start_service("decision", self._mesh_env(inventory_via_proxy=True))
            await self.mesh.wait_healthy(["decision"], config.startup_timeout)
        target = self.mesh.target("decision")
        await self.generator.ask(Phase(target, "open", config.warmup_seconds, rate=plan.rate, seed=300))
        self.say(f"faults at {plan.rate:g}/s for {plan.duration:.0f}s: scoring stopped at {plan.lead:g}s for "
                 f"{plan.scoring_down:g}s, then inventory delayed {plan.inventory_delay * 1000:.0f} ms for "
                 f"{plan.delay_for:g}s")
        meter = self._meter("mesh")
        meter.begin(time.monotonic())
        self.generator.send(Phase(target, "open", plan.duration, rate=plan.rate, seed=301,
                                  outcome_share=config.outcome_share))
        faults = await inject(plan, self.mesh, self.proxy, time.monotonic())
        result: PhaseResult = await self.generator.receive()
        usage = meter.end(time.monotonic())
        self._note_peaks(usage)
        self.faults = analyse(result.samples, faults, result.started_at, plan.duration, config.budgets)
        # The scoring process measured is the one stopped; its successor is not in these figures.
        self.faults["processes"] = {name: asdict(u) for name, u in usage.items()}
        for fault in self.faults["faults"]:
            self.say(f"{fault['name']}: recovery {fault['recovery_s']}s "
                     f"({fault['degraded_after_return']} degraded answers after it returned)")

    # ----------------------------------------------------------------------------------------------- report

    def document(self, started: datetime, seconds: float) -> dict:
        config = self.config
        add_ratios(self.phases)
        doc = {
            "schema": SCHEMA,
            "run": {
                "run_id": self.run_id, "mode": config.mode, "started_at": started.isoformat(),
                "finished_at": datetime.now(UTC).isoformat(), "seconds": round(seconds, 1),
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
            },
            "config": {
                **{k: v for k, v in asdict(config).items() if k not in ("faults", "mix")},
                "data_root": str(config.data_root), "results_dir": str(config.results_dir),
                "mix": asdict(config.mix), "budgets_ms": {k: v * 1000 for k, v in config.budgets.items()},
                "fault_plan": asdict(config.faults), "fault_rate": config.faults.rate,
                "ports": self.ports,
                "generator_nice": GENERATOR_NICE if self.generator.prioritized else 0,
            },
            "dataset": {
                "backend": self.dataset.backend, "customers": self.dataset.customers, "seed": self.dataset.seed,
                "seeded_dir": str(self.dataset.seeded_dir), "run_dir": str(self.dataset.run_dir),
                "database": self.dataset.redacted_url, "reused": self.dataset.reused,
                "seed_seconds": self.dataset.seed_seconds, "seeded_at": self.dataset.seeded_at,
                "copy_seconds": self.dataset.copy_seconds,
                "postgres_settings": self.postgres_settings,
            },
            "method": METHOD,
            "phases": self.phases,
            "max_sustainable": max_sustainable(self.phases, config.p99_bound_ms, config.max_degraded)
            if config.run_load else None,
            "ingest": ingest_summary(self.phases, self.verification, config.p99_bound_ms, config.max_degraded)
            if self.ingester else None,
            "memory": memory_summary(self.peak_rss, self.dataset.customers),
            "faults": self.faults,
        }
        doc["targets"] = evaluate_targets(doc)
        return doc


async def run(config: BenchConfig, out: Callable[[str], None] = print) -> int:
    """Run the bench; 0 when it ran (whatever the targets say), 1 when it could not."""
    bench = _Run(config, out)
    started, t0 = datetime.now(UTC), time.monotonic()
    async with AsyncExitStack() as stack:  # stops everything started, in reverse order, on any exit
        await bench.setup(stack)
        if config.run_load:
            await bench.load()
        if config.run_faults:
            await bench.run_faults()
    doc = bench.document(started, time.monotonic() - t0)
    config.results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{config.mode}-{bench.dataset.backend}-{started:%Y%m%d-%H%M%S}-{bench.run_id}"
    json_path, png_path = config.results_dir / f"{stem}.json", config.results_dir / f"{stem}.png"
    doc["files"] = {"json": str(json_path), "png": str(png_path)}
    draw_chart(doc, png_path)
    json_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    out("")
    out(render(doc))
    out(f"\nresults: {json_path}\n         {png_path}")
    return 0
