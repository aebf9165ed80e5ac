"""The bench's own seeded demo retailer: where it lives, when it is reused, and reading it back.

SQLite: `<root>/sqlite-<customers>/` holds the databases. PostgreSQL (NEXTBEST_DATABASE_URL set, or --postgres):
the same server, but the bench's own database `nextbest_bench_<customers>`, created when missing, so a developer's
database is never touched; `<root>/postgres-<customers>/` holds the catalogue, models and the seed marker.

Seeding 10,000 customers takes about 90 s, so a data set whose `seeded.json` marker shows the same parameters is
reused (and the output says so); `--fresh` deletes it (drops and recreates the PostgreSQL database) and seeds again.
Seeding runs `cli.demo.seed.seed` in a child process whose environment points at the bench's data.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from sqlalchemy import distinct, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from libs.db import create_engine
from libs.settings import CommonSettings, ServiceSettings

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
MARKER = "seeded.json"


@dataclass
class Dataset:
    backend: str  # "sqlite" or "postgresql"
    customers: int
    seed: int
    data_dir: Path
    #: The shared PostgreSQL URL of the services; None on SQLite (a file per service in data_dir).
    database_url: str | None
    reused: bool = False
    seed_seconds: float = 0.0
    seeded_at: str = ""

    def service_url(self, service: str) -> str:
        """The service's database URL, as the service itself resolves it."""
        common = CommonSettings(data_dir=self.data_dir.resolve(), database_url=self.database_url)
        return ServiceSettings(service_name=service, database_url=None, common=common).resolved_database_url

    @property
    def redacted_url(self) -> str | None:
        return make_url(self.database_url).render_as_string(hide_password=True) if self.database_url else None


def bench_database_url(customers: int, postgres: bool, environ: Mapping[str, str]) -> str | None:
    """The bench's PostgreSQL database on the configured server (or the local default with --postgres); None for
    SQLite."""
    configured = environ.get("NEXTBEST_DATABASE_URL")
    if configured and make_url(configured).get_backend_name() == "postgresql":
        base = make_url(configured)
    elif postgres:
        base = make_url(DEFAULT_POSTGRES_URL)
    else:
        return None
    return base.set(database=f"nextbest_bench_{customers}").render_as_string(hide_password=False)


async def ensure_database(url: str, recreate: bool) -> bool:
    """Create the bench database if missing (drop it first when `recreate`); True when it was created."""
    name = make_url(url).database
    admin = create_async_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            exists = await connection.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if exists and recreate:
                await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            if not exists or recreate:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
                return True
            return False
    finally:
        await admin.dispose()


async def prepare(root: Path, customers: int, seed: int, database_url: str | None, fresh: bool,
                  out: Callable[[str], None], impressions: int | None = None) -> Dataset:
    """Reuse or seed the bench's data set (see the module docstring)."""
    backend = "postgresql" if database_url else "sqlite"
    dataset = Dataset(backend, customers, seed, root / f"{'postgres' if database_url else 'sqlite'}-{customers}",
                      database_url)
    marker = dataset.data_dir / MARKER
    if fresh:
        shutil.rmtree(dataset.data_dir, ignore_errors=True)
    if database_url and await ensure_database(database_url, recreate=fresh):
        marker.unlink(missing_ok=True)  # a new, empty database: whatever the marker says is not in it
    recorded = orjson.loads(marker.read_bytes()) if marker.exists() else None
    if recorded and recorded.get("parameters") == {"customers": customers, "seed": seed}:
        dataset.reused = True
        dataset.seeded_at = recorded.get("seeded_at", "")
        dataset.seed_seconds = float(recorded.get("summary", {}).get("timings", {}).get("total", 0.0))
        out(f"reusing the seeded bench data in {dataset.data_dir} ({customers} customers, seed {seed}, seeded "
            f"{dataset.seeded_at}{', database ' + str(dataset.redacted_url) if database_url else ''}); "
            "--fresh seeds again")
        return dataset
    out(f"seeding {customers} demo customers into {dataset.data_dir}"
        f"{' and ' + str(dataset.redacted_url) if database_url else ''} (about 90 s per 10,000; reused next time)")
    started = asyncio.get_running_loop().time()
    await _seed_in_child(dataset, force=recorded is not None, impressions=impressions)
    dataset.seed_seconds = round(asyncio.get_running_loop().time() - started, 1)
    dataset.seeded_at = orjson.loads(marker.read_bytes()).get("seeded_at", "")
    return dataset


async def _seed_in_child(dataset: Dataset, force: bool, impressions: int | None) -> None:
    env = {"NEXTBEST_DATA_DIR": str(dataset.data_dir), "NEXTBEST_LOG_LEVEL": "WARNING"}
    if dataset.database_url:
        env["NEXTBEST_DATABASE_URL"] = dataset.database_url
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_seed_main, args=(env, dataset.customers, dataset.seed, force, impressions),
                            name="nextbest-bench-seed")
    child.start()
    try:
        await asyncio.to_thread(child.join)
    finally:
        if child.is_alive():  # interrupted: do not leave it seeding
            child.terminate()
            child.join(10)
    if child.exitcode != 0:
        raise RuntimeError(f"seeding failed (exit code {child.exitcode})")


def _seed_main(env: dict[str, str], customers: int, seed: int, force: bool, impressions: int | None) -> None:
    for key in [k for k in os.environ if k.startswith("NEXTBEST_")]:
        del os.environ[key]
    os.environ.update(env)
    from cli.demo.seed import seed as run_seed

    options = {"impressions": impressions} if impressions else {}
    report = asyncio.run(run_seed(customers=customers, seed=seed, force=force,
                                  out=lambda line: print(f"  seed | {line}", flush=True), **options))
    if report.rejections:
        print(f"  seed | {report.events_rejected} events rejected: {report.rejections}", file=sys.stderr)
        sys.exit(1)


async def count_bench_events(profile_url: str, run_id: str, failed_batches: Sequence[int]) -> dict[str, int]:
    """How many of this run's ingested events the profile database holds (rows and distinct ids), and how many
    of those belong to batches the generator got no answer for."""
    from services.profile.storage import profile_events

    engine = create_engine(profile_url, pool_size=1)
    event_id = profile_events.c.event_id
    try:
        async with engine.connect() as connection:
            rows, distinct_ids = (await connection.execute(
                select(func.count(), func.count(distinct(event_id))).where(event_id.like(f"bench-{run_id}-%"))
            )).one()
            unacknowledged = 0
            for batch in failed_batches:
                unacknowledged += await connection.scalar(
                    select(func.count()).where(event_id.like(f"bench-{run_id}-{batch:07d}-%"))
                )
    finally:
        await engine.dispose()
    return {"rows": rows, "distinct_ids": distinct_ids, "from_unacknowledged_batches": unacknowledged}
