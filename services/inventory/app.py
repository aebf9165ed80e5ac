"""Wiring of the inventory service: engine, store, domain, servicer; migrations on start, engine disposal on stop."""

from __future__ import annotations

from nextbest.inventory.v1 import inventory_service_pb2_grpc as pb_grpc

from libs.db import create_engine
from libs.server import Registration, ServiceApp
from services.inventory.domain import Inventory
from services.inventory.servicer import FULL_NAME, InventoryServicer
from services.inventory.settings import InventorySettings
from services.inventory.storage import SqlInventoryStore, migrate_schema


def build(settings: InventorySettings) -> ServiceApp:
    engine = create_engine(settings.resolved_database_url, **settings.common.db_pool)
    store = SqlInventoryStore(engine)
    inventory = Inventory(store, max_items=settings.max_items)
    servicer = InventoryServicer(inventory)

    async def on_start() -> None:
        if settings.common.migrate_on_start:
            await migrate_schema(engine)

    async def on_stop() -> None:
        await engine.dispose()

    return ServiceApp(
        name=settings.service_name,
        registrations=[Registration(pb_grpc.add_InventoryServiceServicer_to_server, servicer, FULL_NAME)],
        on_start=on_start,
        on_stop=on_stop,
        parts={"engine": engine, "store": store, "inventory": inventory},
    )
