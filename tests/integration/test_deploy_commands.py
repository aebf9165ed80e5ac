"""The container entry points: `nextbest migrate` (the one-shot migration job) on real SQLite and PostgreSQL,
NEXTBEST_MIGRATE_ON_START=false, and `python -m cli.probe` (the containers' health check) against real servers,
plaintext and under mutual TLS."""

from __future__ import annotations

import argparse
import asyncio

from sqlalchemy import inspect

from cli import probe
from cli.certs import create_certificates
from cli.mesh import SERVICES
from cli.serve import migrate
from libs.db import create_engine
from libs.server import GrpcServer, ServiceApp
from libs.settings import CommonSettings
from libs.tls import load_tls
from services.inventory.app import build as build_inventory
from services.inventory.settings import InventorySettings


async def table_names(url: str) -> set[str]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_migrate_creates_every_services_tables_once(database_url, monkeypatch, capsys):
    monkeypatch.setenv("NEXTBEST_DATABASE_URL", database_url)
    assert await migrate(argparse.Namespace(services=[])) == 0
    tables = await table_names(database_url)
    assert {f"alembic_version_{service}" for service in SERVICES} <= tables
    assert {"identity_customers", "profile_events", "inventory_stock", "decision_decisions"} <= tables
    # A second run (the next release's job, or a retried pod) finds everything at head and changes nothing.
    assert await migrate(argparse.Namespace(services=["inventory"])) == 0
    assert await table_names(database_url) == tables
    assert capsys.readouterr().out.splitlines()[-1] == "inventory: migrated"


async def test_migrate_refuses_an_unknown_service(capsys):
    assert await migrate(argparse.Namespace(services=["inventory", "billing"])) == 2
    assert "unknown service(s): billing" in capsys.readouterr().err


async def test_a_service_skips_migrating_when_told_to(sqlite_url, serve):
    settings = InventorySettings(database_url=sqlite_url, common=CommonSettings(migrate_on_start=False))
    await serve(build_inventory(settings))
    assert not {name for name in await table_names(sqlite_url) if name.startswith("inventory")}
    await serve(build_inventory(InventorySettings(database_url=sqlite_url)))
    assert "inventory_stock" in await table_names(sqlite_url)


async def probe_status(port: int) -> str:
    return await asyncio.to_thread(probe.check, port, 2.0)


async def test_probe_follows_warm_up_and_shutdown():
    warmed_up = asyncio.Event()

    async def warm_up() -> None:
        await warmed_up.wait()

    server = GrpcServer(ServiceApp(name="probed", registrations=[], on_start=warm_up), grace=0.2)
    starting = asyncio.create_task(server.start())
    while server.port == 0:
        await asyncio.sleep(0.01)
    assert await probe_status(server.port) == "NOT_SERVING"
    warmed_up.set()
    port = await starting
    assert await probe_status(port) == "SERVING"
    assert await asyncio.to_thread(probe.main, [str(port)]) == 0
    await server.stop()
    assert (await probe_status(port)).startswith("UNAVAILABLE")
    assert await asyncio.to_thread(probe.main, [str(port)]) == 1


async def test_probe_presents_the_pods_certificate_under_mutual_tls(tmp_path, monkeypatch):
    create_certificates(tmp_path)
    files = {"CERT": tmp_path / "scoring.pem", "KEY": tmp_path / "scoring.key", "CA": tmp_path / "ca.pem"}
    tls = load_tls(CommonSettings(tls_cert_file=files["CERT"], tls_key_file=files["KEY"], tls_ca_file=files["CA"]))
    server = GrpcServer(ServiceApp(name="probed", registrations=[]), grace=0.2, tls=tls)
    port = await server.start()
    try:
        # Only the CA: the server verifies, but demands a client certificate and refuses the handshake.
        monkeypatch.setenv("NEXTBEST_TLS_CA_FILE", str(files["CA"]))
        assert (await probe_status(port)).startswith("UNAVAILABLE")
        for name, path in files.items():
            monkeypatch.setenv(f"NEXTBEST_TLS_{name}_FILE", str(path))
        assert await probe_status(port) == "SERVING"
    finally:
        await server.stop()

