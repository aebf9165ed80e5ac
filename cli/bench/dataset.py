"""The bench's own seeded demo retailer: where it lives, when it is reused, the fresh copy each run works on,
and reading it back.

Seeding 10,000 customers takes about 90 s, so the seeded data is kept and reused while its `seeded.json` marker
shows the same parameters and the profile's fold version (the output says so); `--fresh` deletes it and seeds again. Every run then works on a
fresh copy of it, so runs start from the same state and never accumulate each other's decisions and events:

- SQLite: seeded into `<root>/sqlite-<customers>/seeded/`, copied to `<root>/sqlite-<customers>/run/`.
- PostgreSQL (NEXTBEST_DATABASE_URL set, or --postgres): the same server, but the bench's own databases —
  `nextbest_bench_<customers>` seeded, `nextbest_bench_<customers>_run` created from it as a template — so a
  developer's database is never touched; the folders hold the catalogue, models, marker and logs.

Seeding runs `cli.demo.seed.seed` in a child process whose environment points at the seeded data. A run holds
an exclusive lock on its data set's folder (`bench.lock`) from the start, so two runs (whatever their ports)
never seed or copy under each other.
"""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson
from sqlalchemy import distinct, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from libs.db import connected
from libs.settings import CommonSettings, ServiceSettings
from services.profile.domain.state import FOLD_VERSION

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
MARKER = "seeded.json"


@dataclass
class Dataset:
    backend: str  # "sqlite" or "postgresql"
    customers: int
    seed: int
    seeded_dir: Path
    run_dir: Path
    #: The services' shared PostgreSQL URLs (seeded, and the run's copy); None on SQLite (files in the folders).
    seeded_url: str | None
    run_url: str | None
    reused: bool = False
    seed_seconds: float = 0.0
    seeded_at: str = ""
    copy_seconds: float = 0.0
    #: The open lock file that keeps other runs off this data set until this process exits.
    lock: IO | None = field(default=None, repr=False)

    def service_url(self, service: str) -> str:
        """The service's database URL in the run's copy, as the service itself resolves it."""
        common = CommonSettings(data_dir=self.run_dir.resolve(), database_url=self.run_url)
        return ServiceSettings(service_name=service, database_url=None, common=common).resolved_database_url

    @property
    def redacted_url(self) -> str | None:
        return make_url(self.run_url).render_as_string(hide_password=True) if self.run_url else None


class DatasetBusy(RuntimeError):
    """Another bench run (any ports) is using this data set: its run copy would be replaced under it."""


def hold_lock(folder: Path) -> IO:
    """An exclusive lock on the data set's folder, held until the file is closed or the process exits."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / "bench.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DatasetBusy(f"another bench run is using {folder}; wait for it or use another --data-root") from None
    return handle


def bench_database_url(customers: int, postgres: bool, environ: Mapping[str, str]) -> str | None:
    """The bench's seeded PostgreSQL database on the configured server (or the local default with --postgres);
    None for SQLite."""
    configured = environ.get("NEXTBEST_DATABASE_URL")
    if configured and make_url(configured).get_backend_name() == "postgresql":
        base = make_url(configured)
    elif postgres:
        base = make_url(DEFAULT_POSTGRES_URL)
    else:
        return None
    return base.set(database=f"nextbest_bench_{customers}").render_as_string(hide_password=False)


def _admin_engine(url: str):
    return create_async_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")


async def create_database(url: str, *, replace: bool, template: str | None = None) -> bool:
    """Create the database of `url` (from `template` if given) unless it exists; `replace` drops it first.
    True when it was created."""
    name = make_url(url).database
    admin = _admin_engine(url)
    try:
        async with admin.connect() as connection:
            exists = await connection.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if exists and not replace:
                return False
            if exists:
                await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            await connection.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
            return True
    finally:
        await admin.dispose()


async def prepare(root: Path, customers: int, seed: int, database_url: str | None, fresh: bool,
                  out: Callable[[str], None], impressions: int | None = None) -> Dataset:
    """Reuse or seed the bench's data set, then make the run's fresh copy (see the module docstring)."""
    folder = root / f"{'postgres' if database_url else 'sqlite'}-{customers}"
    lock = hold_lock(folder)
    run_url = None
    if database_url:
        run_url = make_url(database_url).set(database=f"{make_url(database_url).database}_run")
        run_url = run_url.render_as_string(hide_password=False)
    dataset = Dataset("postgresql" if database_url else "sqlite", customers, seed, folder / "seeded", folder / "run",
                      database_url, run_url, lock=lock)
    marker = dataset.seeded_dir / MARKER
    if fresh:
        shutil.rmtree(dataset.seeded_dir, ignore_errors=True)
    if database_url and await create_database(database_url, replace=fresh):
        marker.unlink(missing_ok=True)  # a new, empty database: whatever the marker says is not in it
    recorded = orjson.loads(marker.read_bytes()) if marker.exists() else None
    # Profiles folded by an older release would be rebuilt at the start of every run (each works on a fresh copy
    # of the seeded data): seed again instead.
    if (recorded and recorded.get("parameters") == {"customers": customers, "seed": seed}
            and recorded.get("fold_version") == FOLD_VERSION):
        dataset.reused = True
        dataset.seeded_at = recorded.get("seeded_at", "")
        dataset.seed_seconds = float(recorded.get("summary", {}).get("timings", {}).get("total", 0.0))
        out(f"reusing the seeded bench data in {dataset.seeded_dir} ({customers:,} customers, seed {seed}, seeded "
            f"{dataset.seeded_at}); --fresh seeds again")
    else:
        out(f"seeding {customers:,} demo customers into {dataset.seeded_dir}"
            f"{' and database ' + make_url(database_url).database if database_url else ''} "
            "(about 90 s per 10,000; reused next time)")
        started = time.monotonic()
        await _seed_in_child(dataset, force=recorded is not None, impressions=impressions)
        dataset.seed_seconds = round(time.monotonic() - started, 1)
        dataset.seeded_at = orjson.loads(marker.read_bytes()).get("seeded_at", "")
    started = time.monotonic()
    await _fresh_copy(dataset)
    dataset.copy_seconds = round(time.monotonic() - started, 1)
    out(f"fresh copy for this run in {dataset.run_dir}{' and database ' + make_url(run_url).database if run_url else ''}"
        f" ({dataset.copy_seconds:.1f}s)")
    return dataset


async def _fresh_copy(dataset: Dataset) -> None:
    """The run's copy of the seeded data: the folder (SQLite databases included) and the PostgreSQL database."""
    def copy_folder() -> None:
        shutil.rmtree(dataset.run_dir, ignore_errors=True)
        shutil.copytree(dataset.seeded_dir, dataset.run_dir, ignore=shutil.ignore_patterns("logs"))

    await asyncio.to_thread(copy_folder)
    if dataset.run_url:
        await create_database(dataset.run_url, replace=True, template=make_url(dataset.seeded_url).database)


async def _seed_in_child(dataset: Dataset, force: bool, impressions: int | None) -> None:
    env = {"NEXTBEST_DATA_DIR": str(dataset.seeded_dir), "NEXTBEST_LOG_LEVEL": "WARNING"}
    if dataset.seeded_url:
        env["NEXTBEST_DATABASE_URL"] = dataset.seeded_url
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_seed_main, args=(env, dataset.customers, dataset.seed, force, impressions),
                            name="nextbest-bench-seed")
    child.start()
    try:
        await asyncio.to_thread(child.join)
    finally:
        if child.is_alive():
            # Interrupted. Ctrl-C reached the seeder too (same process group): give it time to stop the identity
            # process it started, then make sure it is gone.
            await asyncio.to_thread(child.join, 20)
            if child.is_alive():
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


#: Server settings that change what a run measures, recorded with it (`autovacuum` off, e.g., lets the profile's
#: constantly rewritten states bloat their table during the run, which a production server would vacuum).
POSTGRES_SETTINGS = ("autovacuum", "synchronous_commit", "shared_buffers", "max_connections",
                     "default_toast_compression", "jit")
_SETTINGS = text("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(:names) ORDER BY name")


async def postgres_settings(url: str) -> dict[str, str]:
    """The server's version and POSTGRES_SETTINGS, read through `url` (sizes counted in 8 kB pages as MB)."""
    async with connected(url) as connection:
        rows = await connection.execute(_SETTINGS, {"names": list(POSTGRES_SETTINGS)})
        found = {
            name: f"{int(setting) * 8 // 1024}MB" if unit == "8kB" else setting + (unit or "")
            for name, setting, unit in rows
        }
        found["server_version"] = await connection.scalar(text("SHOW server_version"))
    return found


async def count_bench_events(profile_url: str, run_id: str, failed_batches: Sequence[int]) -> dict[str, int]:
    """How many of this run's ingested events the profile database holds (rows and distinct ids), and how many
    of those belong to batches the generator got no answer for."""
    from services.profile.storage import profile_events

    event_id = profile_events.c.event_id
    async with connected(profile_url) as connection:
        rows, distinct_ids = (await connection.execute(
            select(func.count(), func.count(distinct(event_id))).where(event_id.like(f"bench-{run_id}-%"))
        )).one()
        unacknowledged = 0
        for batch in failed_batches:
            unacknowledged += await connection.scalar(
                select(func.count()).where(event_id.like(f"bench-{run_id}-{batch:07d}-%"))
            )
    return {"rows": rows, "distinct_ids": distinct_ids, "from_unacknowledged_batches": unacknowledged}
