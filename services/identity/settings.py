"""Settings of the identity service (environment variables prefixed NEXTBEST_IDENTITY_)."""

from __future__ import annotations

import phonenumbers
from pydantic import Field, field_validator, model_validator
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

    match_upper_threshold: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="Person-trait match probability at or above which Resolve links to the customer automatically.",
    )
    match_lower_threshold: float = Field(
        0.60,
        gt=0,
        lt=1,
        description="Person-trait match probability at or above which (and below the upper threshold) Resolve "
        "returns the customer as a candidate for review, without linking.",
    )
    match_max_candidates: int = Field(
        200, ge=1, le=10_000, description="Most stored trait records one Resolve by person traits compares."
    )

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> IdentitySettings:
        if self.match_lower_threshold > self.match_upper_threshold:
            raise ValueError("match_lower_threshold must not exceed match_upper_threshold")
        return self

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region phonenumbers knows (e.g. US, GB, DE)")
        return region
