"""`python -m services.profile.read_bench`, tiny and short: it loads customers, starts the real profile service (and,
on PostgreSQL, a second one for ingest), reads while ingesting, and its own check finds every accepted event stored
and applied once (timings are not asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def _run(*options: str) -> str:
    command = [sys.executable, "-m", "services.profile.read_bench", "--customers", "300", "--warmup", "1",
               "--seconds", "2", "--rate", "50", "--ingest-rate", "200", "--ingest-batch", "20", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _checked(out: str) -> None:
    assert "(0 failed)" in out
    assert "every accepted event stored and applied once" in out
    assert "GetProfile: p50" in out and "GetFeatures: p50" in out and "read cache:" in out
    assert "of which cache misses, their database read: p50" in out


def test_on_sqlite():
    _checked(_run("--database-url", "sqlite"))


@pytest.mark.postgres
def test_on_postgres_with_an_ingest_replica(postgres_url):
    # Reads go to one profile process, events to another: the readers' cache hears of the writes by NOTIFY.
    _checked(_run("--database-url", postgres_url, "--ingest-replica"))


def test_an_ingest_replica_needs_postgres():
    result = subprocess.run(
        [sys.executable, "-m", "services.profile.read_bench", "--database-url", "sqlite", "--ingest-replica"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "needs PostgreSQL" in result.stderr
