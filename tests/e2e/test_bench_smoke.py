"""`nextbest bench` end to end, tiny and short: seeds, starts the mesh and the baseline, drives both, injects the
faults, verifies the ingested events, and writes a JSON report with every field (timings are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from cli.bench.launcher import busy_ports, ports_from
from cli.bench.stats import CHANNELS, PERCENTILES

pytestmark = pytest.mark.e2e
NEXTBEST = str(Path(sys.executable).parent / "nextbest")
#: Away from the e2e meshes (51050.., 52050..) and the bench's default (53050..).
PORT_BASE = 54050
SUMMARY_FIELDS = {"count", "ok", "errors", "error_rate", "error_codes", "degraded", "degraded_rate", "over_budget",
                  "throughput", "latency_ms", "send_lag_ms"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    command = [
        NEXTBEST, "bench", "--quick", "--customers", "300", "--duration-scale", "0.1", "--train-impressions", "5000",
        "--rates", "50", "200", "--workers", "1", "4", "--with-faults", "--port-base", str(PORT_BASE),
        "--data-root", str(root / "data"), "--results-dir", str(root / "results"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [path] = (root / "results").glob("bench-quick-sqlite-*.json")
    return orjson.loads(path.read_bytes()), result


def test_the_report_has_every_section(report):
    doc, _ = report
    assert doc["schema"] == "nextbest-bench/1"
    assert set(doc) >= {"run", "config", "dataset", "method", "phases", "max_sustainable", "ingest", "memory",
                        "faults", "targets", "files"}
    assert doc["dataset"]["backend"] == "sqlite" and doc["dataset"]["customers"] == 300
    assert doc["dataset"]["reused"] is False
    assert Path(doc["files"]["png"]).read_bytes().startswith(b"\x89PNG")


def test_every_phase_of_both_targets_with_every_channel_and_process(report):
    doc, _ = report
    shapes = {(p["target"], p["shape"], p.get("offered_rate", p.get("concurrency"))) for p in doc["phases"]}
    assert shapes == {(t, "open", r) for t in ("mesh", "baseline") for r in (50, 200)} | {
        (t, "closed", n) for t in ("mesh", "baseline") for n in (1, 4)}
    for phase in doc["phases"]:
        assert phase["decisions"]["count"] > 0
        assert set(phase["channels"]) == set(CHANNELS)
        for summary in (phase["decisions"], *phase["channels"].values()):
            assert set(summary) >= SUMMARY_FIELDS and set(summary["latency_ms"]) >= set(PERCENTILES)
        if phase["target"] == "mesh":
            assert set(phase["processes"]) >= {"decision", "identity", "profile", "scoring", "inventory",
                                               "generator", "ingest_generator"}
            assert set(phase["vs_baseline"]) == {"decisions", "web", "pos", "call_center"}
            assert phase["ingest"]["accepted"] > 0
        else:
            assert set(phase["processes"]) >= {"front", "backend_a", "backend_b", "generator"}
        assert phase["processes"]["machine"]["cpu_seconds"] > 0  # the whole machine's busy time
        assert all(u["peak_rss_mb"] > 0 for name, u in phase["processes"].items() if name != "machine")


def test_every_accepted_event_is_in_the_profile_database_exactly_once(report):
    doc, _ = report
    check = doc["ingest"]["verification"]
    assert check["accepted"] > 0
    assert check["present"] == check["accepted"] and check["duplicates"] == 0 and check["missing"] == 0
    assert check["ok"] is True


def test_faults_report_recovery_per_fault_and_a_timeline(report):
    doc, _ = report
    faults = doc["faults"]
    assert [f["name"] for f in faults["faults"]] == ["scoring_stopped", "inventory_delayed_200ms"]
    for fault in faults["faults"]:
        assert fault["started"] < fault["returned"]
        assert {"recovery_s", "settled_s", "degraded_after_return", "relapses", "recovered", "pass"} <= set(fault)
    assert faults["decisions"]["count"] > 0
    assert len(faults["timeline"]) >= int(doc["config"]["fault_plan"]["lead"]) + 3
    assert set(faults["checks"]) == {"no_answer_over_budget", "no_errors", "recovery_within_5s"}
    assert faults["processes"]["decision"]["cpu_seconds"] > 0
    assert any(row["degraded_scoring"] for row in faults["timeline"])  # scoring really was down


def test_targets_are_judged_and_the_table_printed(report):
    doc, result = report
    names = {t["name"] for t in doc["targets"]}
    assert names == {"decide_web_latency_at_200", "max_sustainable_vs_baseline", "ingest_rate_exactly_once",
                     "rss_per_service", "faults_no_answer_over_budget", "faults_no_errors",
                     "faults_recovery_within_5s"}
    assert all(t["pass"] in (True, False) for t in doc["targets"])
    for heading in ("OPEN LOOP", "CLOSED LOOP", "MAX SUSTAINABLE", "INGEST", "FAULTS", "TARGETS"):
        assert heading in result.stdout


def test_nothing_is_left_running(report):
    assert busy_ports(list(ports_from(PORT_BASE).values())) == []
