"""The bench's report: phase records, ratios to the baseline, maximum sustainable rate, targets, tables, chart."""

from __future__ import annotations

import grpc
import pytest

from cli.bench.driver import IngestStats, PhaseResult
from cli.bench.procfs import Usage
from cli.bench.report import (
    SERVICES,
    add_ratios,
    draw_chart,
    evaluate_targets,
    ingest_record,
    ingest_summary,
    max_sustainable,
    memory_summary,
    phase_record,
    render,
    verification_record,
)
from cli.bench.stats import CHANNELS, PERCENTILES, Samples

pytestmark = pytest.mark.unit

BUDGETS = {"web": 0.1, "pos": 0.25, "call_center": 0.25, "outcome": 1.0}
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def _result(latency: float, count: int = 100, errors: int = 0, degraded: int = 0) -> PhaseResult:
    samples = Samples()
    for k in range(count):
        channel = (0, 0, 0, 0, 0, 0, 0, 1, 1, 2)[k % 10]
        samples.add(channel, k / count, latency, latency, DEADLINE if k < errors else 0, 1 if k >= count - degraded else 0)
    samples.add(3, 0.5, 0.002, 0.002, 0, 0)  # one RecordOutcome
    return PhaseResult(samples, started_at=100.0, elapsed=1.0)


def _usage(target: str) -> dict[str, Usage]:
    names = SERVICES if target == "mesh" else ("front", "backend_a", "backend_b")
    return {n: Usage(1.0, 50.0, 120.0, 110.0) for n in (*names, "generator", "runner")}


def _phases() -> list[dict]:
    ingest = IngestStats(target_rate=5000, batch_size=500, batches=10, batches_ok=10, events_sent=5000,
                         accepted=5000, elapsed=1.0, latencies=[0.05] * 10)
    phases = []
    for shape, level, mesh_latency in (("open", 200, 0.02), ("closed", 1, 0.01), ("closed", 4, 0.03),
                                       ("closed", 16, 0.2)):
        for target, latency in (("baseline", 0.004), ("mesh", mesh_latency)):
            errors = 5 if target == "mesh" and level == 16 else 0
            result = _result(latency, errors=errors)
            if shape == "closed":  # throughput grows with workers
                result = PhaseResult(result.samples, 100.0, 1.0 / level if target == "mesh" else 0.1 / level)
            phases.append(phase_record(target, shape, level, result, _usage(target), BUDGETS,
                                       ingest if target == "mesh" else None))
    add_ratios(phases)
    return phases


def _document(phases: list[dict], backend: str = "postgresql") -> dict:
    verification = verification_record(20_000, 0, {"rows": 20_000, "distinct_ids": 20_000,
                                                   "from_unacknowledged_batches": 0})
    doc = {
        "run": {"run_id": "abcd1234", "mode": "quick", "seconds": 60.0},
        "config": {"fault_rate": 100, "warmup_seconds": 2.0},
        "dataset": {"backend": backend, "customers": 2000, "reused": True},
        "phases": phases,
        "max_sustainable": max_sustainable(phases, p99_bound_ms=100, max_degraded=0.01),
        "ingest": ingest_summary(phases, verification, p99_bound_ms=100, max_degraded=0.01),
        "memory": memory_summary({s: 120.0 for s in SERVICES}, 2000),
        "faults": None,
    }
    doc["targets"] = evaluate_targets(doc)
    return doc


def test_a_phase_record_has_every_channel_and_process():
    record = _phases()[1]
    assert record["target"] == "mesh" and record["offered_rate"] == 200
    assert set(record["channels"]) == set(CHANNELS)
    for summary in (record["decisions"], *record["channels"].values()):
        assert {"count", "ok", "errors", "error_rate", "error_codes", "degraded", "degraded_rate", "over_budget",
                "throughput", "latency_ms", "send_lag_ms"} <= set(summary)
        assert set(PERCENTILES) <= set(summary["latency_ms"])
    assert record["decisions"]["count"] == 100 and record["channels"]["outcome"]["count"] == 1
    assert set(record["processes"]) == {*SERVICES, "generator", "runner"}
    assert record["ingest"]["achieved_rate"] == 5000


def test_mesh_phases_carry_their_ratio_to_the_same_baseline_phase():
    mesh = _phases()[1]
    assert mesh["vs_baseline"]["decisions"]["p50"] == 5.0  # 20 ms vs 4 ms
    assert mesh["vs_baseline"]["web"]["throughput"] == 1.0
    assert "vs_baseline" not in _phases()[0]


def test_max_sustainable_is_the_fastest_clean_closed_step():
    result = max_sustainable(_phases(), p99_bound_ms=100, max_degraded=0.01)
    assert result["mesh"] == {"rate": 400.0, "concurrency": 4}  # 16 workers had errors and a 200 ms p99
    assert result["baseline"] == {"rate": 16000.0, "concurrency": 16}
    assert result["ratio"] == 0.03
    assert "0 errors" in result["definition"]


def test_too_much_degradation_is_not_sustainable():
    phases = [phase_record("mesh", "closed", 1, _result(0.01, degraded=5), _usage("mesh"), BUDGETS)]
    assert max_sustainable(phases, 100, 0.01)["mesh"] is None


def test_targets_pass_fail_and_not_measured():
    doc = _document(_phases())
    verdicts = {t["name"]: t["pass"] for t in doc["targets"]}
    assert verdicts == {
        "decide_web_latency_at_200": False,  # p50 20 ms > 8 ms
        "max_sustainable_vs_baseline": False,
        "ingest_rate_exactly_once": True,
        "rss_per_service": True,
    }
    rss = next(t for t in doc["targets"] if t["name"] == "rss_per_service")
    assert "2,000 customers" in rss["measured"] and "100000" in rss["note"]
    without_200 = _document([p for p in _phases() if p["shape"] == "closed"], backend="sqlite")
    web = next(t for t in without_200["targets"] if t["name"] == "decide_web_latency_at_200")
    assert web["pass"] is None


def test_ingest_is_judged_over_the_run_and_also_shown_over_the_phases_whose_decisions_were_sustained():
    phases = _phases()
    overloaded = next(p for p in phases if p["target"] == "mesh" and p.get("concurrency") == 16)  # errors, 200 ms p99
    overloaded["ingest"] = ingest_record(IngestStats(target_rate=5000, batch_size=500, batches=10, batches_ok=10,
                                                     events_sent=5000, accepted=3000, elapsed=1.0))
    summary = ingest_summary(phases, None, p99_bound_ms=100, max_degraded=0.01)
    assert summary["achieved_rate"] == 4500.0  # (3 x 5,000 + 3,000) events in 4 s
    assert (summary["sustained_phases"], summary["achieved_rate_sustained"]) == (3, 5000.0)
    doc = _document(phases)
    target = next(t for t in doc["targets"] if t["name"] == "ingest_rate_exactly_once")
    assert target["pass"] is False  # the whole run counts
    assert "4,500 events/s over the run" in target["measured"]
    assert "5,000/s in the 3 phases whose decisions were sustained" in target["measured"]
    assert "5,000/s in the 3 phases whose decisions were sustained" in render(doc)
    nothing_served = ingest_summary([overloaded], None, p99_bound_ms=100, max_degraded=0.01)
    assert (nothing_served["sustained_phases"], nothing_served["achieved_rate_sustained"]) == (0, None)


def test_ingest_verification_counts_missing_and_duplicate_events():
    assert verification_record(100, 0, {"rows": 100, "distinct_ids": 100, "from_unacknowledged_batches": 0})["ok"]
    missing = verification_record(100, 0, {"rows": 98, "distinct_ids": 98, "from_unacknowledged_batches": 0})
    assert (missing["missing"], missing["ok"]) == (2, False)
    reported = verification_record(100, 3, {"rows": 100, "distinct_ids": 100, "from_unacknowledged_batches": 0})
    assert (reported["duplicates"], reported["ok"]) == (3, False)
    unacknowledged = verification_record(100, 0, {"rows": 150, "distinct_ids": 150,
                                                  "from_unacknowledged_batches": 50})
    assert (unacknowledged["present"], unacknowledged["unacknowledged_present"], unacknowledged["ok"]) == (100, 50, True)


def test_render_prints_tables_and_every_target(tmp_path):
    doc = _document(_phases())
    text = render(doc)
    for expected in ("OPEN LOOP", "CLOSED LOOP", "MAX SUSTAINABLE", "CPU %", "INGEST", "TARGETS", "PASS", "FAIL"):
        assert expected in text
    assert text.count("\n  PASS") + text.count("\n  FAIL") + text.count("\n  n/a") == len(doc["targets"])
    assert "warm-up 2 s per target" in text  # the figures' cold start is stated


def test_render_names_the_postgresql_settings_and_warns_when_autovacuum_is_off():
    doc = _document(_phases())
    doc["dataset"]["postgres_settings"] = {"server_version": "15.20", "autovacuum": "off",
                                           "synchronous_commit": "on", "shared_buffers": "128MB"}
    header = render(doc).splitlines()[1]
    assert header.startswith("PostgreSQL 15.20: autovacuum off, synchronous_commit on, shared_buffers 128MB")
    assert "autovacuum is off here" in header
    doc["dataset"]["postgres_settings"]["autovacuum"] = "on"
    assert "autovacuum is off here" not in render(doc)


def test_the_chart_is_written(tmp_path):
    path = tmp_path / "chart.png"
    draw_chart(_document(_phases()), path)
    assert path.read_bytes().startswith(b"\x89PNG")
