"""Wiring of the inventory service: engine, store, domain, servicer, change feed; migrations on start, engine
disposal on stop. On PostgreSQL a relay LISTENs for every replica's committed changes and feeds `WatchChanges`."""

from __future__ import annotations

import asyncio
import contextlib

from nextbest.inventory.v1 import inventory_service_pb2_grpc as pb_grpc

from libs.changefeed import PostgresRelay
from libs.db import create_engine
from libs.server import Registration, ServiceApp
from services.inventory.domain import Inventory
from services.inventory.servicer import FULL_NAME, InventoryServicer
from services.inventory.settings import InventorySettings
from services.inventory.storage import CHANGES_CHANNEL, SqlInventoryStore, migrate_schema


def build(settings: InventorySettings) -> ServiceApp:
    engine = create_engine(settings.resolved_database_url, **settings.common.db_pool)
    store = SqlInventoryStore(engine)
    inventory = Inventory(store, max_items=settings.max_items)
    servicer = InventoryServicer(inventory, store.changes)
    relay = PostgresRelay(engine, CHANGES_CHANNEL, store.changes) if engine.dialect.name == "postgresql" else None

    async def on_start() -> None:
        if settings.common.migrate_on_start:
            await migrate_schema(engine)
        if relay is not None:
            relay.start()
            # Watchers that subscribe before the relay listens are turned away (and retry): usually a few ms.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(relay.listening.wait(), timeout=5.0)

    async def on_stop() -> None:
        if relay is not None:
            await relay.stop()
        await engine.dispose()

    return ServiceApp(
        name=settings.service_name,
        registrations=[Registration(pb_grpc.add_InventoryServiceServicer_to_server, servicer, FULL_NAME)],
        on_start=on_start,
        on_stop=on_stop,
        on_drain=store.changes.close,
        parts={"engine": engine, "store": store, "inventory": inventory, "relay": relay},
    )
