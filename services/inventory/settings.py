"""Settings of the inventory service (environment prefix NEXTBEST_INVENTORY_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class InventorySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NEXTBEST_INVENTORY_", extra="ignore")

    service_name: str = "inventory"
    port: int = Field(50054, ge=0, le=65535, description="gRPC port of the inventory service.")
    max_items: int = Field(
        1000,
        ge=1,
        le=10000,  # three lists of this size stay under SQLite's 32,766 bound parameters per statement
        description="Most SKUs, product ids or location ids in one CheckAvailability list, and most changes in one "
        "UpdateStock; larger requests are rejected with INVALID_ARGUMENT.",
    )
