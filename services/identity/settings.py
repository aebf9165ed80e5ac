"""Settings of the identity service (environment variables prefixed NEXTBEST_IDENTITY_)."""

from __future__ import annotations

import phonenumbers
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class IdentitySettings(ServiceSettings):
    """Port, database and normalisation settings of the identity service."""

    model_config = SettingsConfigDict(env_prefix="NEXTBEST_IDENTITY_", extra="ignore")

    service_name: str = "identity"
    port: int = Field(50051, ge=0, le=65535, description="gRPC port of the identity service.")
    default_region: str = Field(
        "US",
        description="ISO 3166 region used to read phone numbers written without a +country prefix.",
    )

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region phonenumbers knows (e.g. US, GB, DE)")
        return region
