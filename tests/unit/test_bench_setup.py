"""How the bench sets itself up: presets and flags, its own ports and environment, its own database, /proc."""

from __future__ import annotations

import os

import pytest

from cli.bench.config import QUICK, from_args
from cli.bench.dataset import DatasetBusy, bench_database_url, hold_lock
from cli.bench.launcher import mesh_env, ports_from
from cli.bench.procfs import Meter, counter_delta, cpu_seconds, machine_busy_seconds, memory_mb, postgres_cpu_seconds
from cli.main import build_parser

pytestmark = pytest.mark.unit


def _config(*flags: str):
    return from_args(build_parser().parse_args(["bench", *flags]))


def test_presets_and_modes():
    full = _config()
    assert (full.mode, full.customers, full.run_load, full.run_faults) == ("full", 10_000, True, True)
    assert full.open_rates == (50, 100, 200, 400) and full.ingest_rate == 5000
    quick = _config("--quick")
    assert (quick.mode, quick.customers, quick.run_faults) == ("quick", QUICK.customers, False)
    faults = _config("--faults")
    assert (faults.mode, faults.run_load, faults.run_faults) == ("faults", False, True)
    assert _config("--no-faults").run_faults is False


def test_flags_override_the_preset_and_scale_durations():
    config = _config("--quick", "--customers", "300", "--rates", "10", "20", "--workers", "2",
                     "--duration-scale", "0.1", "--ingest-rate", "0", "--port-base", "54050")
    assert config.customers == 300 and config.open_rates == (10, 20) and config.closed_steps == (2,)
    assert config.open_seconds == 0.5 and config.ingest_rate == 0 and config.port_base == 54050
    assert config.faults.scoring_down == 1.0
    assert config.warmup_seconds == 0.5  # scaled with the steps, at least half a second
    assert _config("--quick", "--warmup", "60", "--duration-scale", "0.1").warmup_seconds == 60  # as asked
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit):
            _config("--warmup", bad)


def test_customers_below_the_showcase_minimum_are_refused():
    with pytest.raises(SystemExit):
        _config("--customers", "3")


def test_the_mesh_gets_its_own_ports_data_and_targets_and_none_of_the_developers_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTBEST_DECISION_BUDGET_WEB_MS", "5")
    monkeypatch.setenv("NEXTBEST_DATABASE_URL", "postgresql+asyncpg://dev@db/dev")
    ports = ports_from(54050)
    env = mesh_env(tmp_path, None, ports, inventory_via_proxy=True)
    assert "NEXTBEST_DECISION_BUDGET_WEB_MS" not in env and "NEXTBEST_DATABASE_URL" not in env
    assert env["NEXTBEST_DATA_DIR"] == str(tmp_path)
    assert env["NEXTBEST_DECISION_PORT"] == "54050" and env["NEXTBEST_INVENTORY_PORT"] == "54054"
    assert env["NEXTBEST_DECISION_SCORING_TARGET"] == "127.0.0.1:54053"
    assert env["NEXTBEST_PROFILE_IDENTITY_TARGET"] == "127.0.0.1:54051"
    assert env["NEXTBEST_DECISION_INVENTORY_TARGET"] == f"127.0.0.1:{ports['proxy']}"
    direct = mesh_env(tmp_path, "postgresql+asyncpg://x@h/bench", ports)
    assert direct["NEXTBEST_DECISION_INVENTORY_TARGET"] == "127.0.0.1:54054"
    assert direct["NEXTBEST_DATABASE_URL"] == "postgresql+asyncpg://x@h/bench"


def test_the_bench_database_is_its_own_on_the_configured_server():
    assert bench_database_url(2000, False, {}) is None
    assert bench_database_url(2000, True, {}) == "postgresql+asyncpg://postgres@127.0.0.1:5432/nextbest_bench_2000"
    configured = {"NEXTBEST_DATABASE_URL": "postgresql+asyncpg://me:secret@db.example:6543/nextbest"}
    assert bench_database_url(10, False, configured) == "postgresql+asyncpg://me:secret@db.example:6543/nextbest_bench_10"
    assert bench_database_url(10, False, {"NEXTBEST_DATABASE_URL": "sqlite+aiosqlite:///x.db"}) is None


def test_proc_readings_of_this_process():
    busy = sum(range(2_000_000))  # use some CPU
    assert busy > 0
    assert cpu_seconds(os.getpid()) > 0
    memory = memory_mb(os.getpid())
    assert 0 < memory["rss_mb"] <= memory["peak_rss_mb"]
    assert cpu_seconds(2**22 + 12345) is None and memory_mb(2**22 + 12345) is None
    meter = Meter({"me": os.getpid()})
    meter.begin(0.0)
    sum(range(2_000_000))
    usage = meter.end(1.0)["me"]
    assert usage.cpu_seconds >= 0 and usage.peak_rss_mb >= usage.rss_mb > 0


def test_aggregate_counters_are_measured_like_processes():
    assert machine_busy_seconds()["all"] > 0
    assert all(seconds >= 0 for seconds in postgres_cpu_seconds().values())
    readings = iter([{"all": 10.0}, {"all": 10.5}])
    meter = Meter({}, {"machine": lambda: next(readings)})
    meter.begin(100.0)
    usage = meter.end(102.0)["machine"]
    assert (usage.cpu_seconds, usage.cpu_percent, usage.peak_rss_mb) == (0.5, 25.0, None)


def test_a_counter_over_processes_counts_new_ones_whole_and_misses_ended_ones():
    before = {1: 5.0, 2: 3.0}
    after = {1: 6.0, 3: 0.5}  # 2 ended, 3 started
    assert counter_delta(before, after) == 1.5


def test_a_data_set_is_used_by_one_run_at_a_time(tmp_path):
    first = hold_lock(tmp_path / "sqlite-300")
    with pytest.raises(DatasetBusy, match="another bench run"):
        hold_lock(tmp_path / "sqlite-300")
    hold_lock(tmp_path / "sqlite-400").close()  # another data set is free
    first.close()
    hold_lock(tmp_path / "sqlite-300").close()  # released with its file
