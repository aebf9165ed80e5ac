"""Settings of the profile service (environment variables prefixed NEXTBEST_PROFILE_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class ProfileSettings(ServiceSettings):
    """Port, database, batch limits and the identity dependency of the profile service."""

    model_config = SettingsConfigDict(env_prefix="NEXTBEST_PROFILE_", extra="ignore")

    service_name: str = "profile"
    port: int = Field(50052, ge=0, le=65535, description="gRPC port of the profile service.")
    identity_target: str = Field(
        "127.0.0.1:50051",
        description="host:port of the identity service, which resolves events that carry identifiers only.",
    )
    max_batch: int = Field(
        1000,
        ge=1,
        le=10_000,  # keeps one batch's statements under the drivers' bind-parameter limits
        description="Most events one IngestEvents call may carry.",
    )
    identity_timeout_seconds: float = Field(
        1.0, gt=0, description="Deadline of one Resolve call to the identity service (capped by the caller's)."
    )
    resolution_cache_max_entries: int = Field(
        20_000,
        ge=0,
        description="Identifier sets whose customer is kept in memory, so events that carry identifiers resolve "
        "without a call to identity; kept exact by identity's change feed (a merge, unmerge, link or erasure drops "
        "the customer's entries) and bypassed while that feed is down. 0 turns the cache off.",
    )
    recent_activity: int = Field(20, ge=0, le=1000, description="How many recent events GetProfile returns.")
    ingest_lanes: int = Field(
        1,
        ge=1,
        le=32,
        description="Ingest transactions under way at once, each for its own share of the customers; concurrent "
        "batches are applied together (group commit). More than one pays only where PostgreSQL has cores to spare: "
        "on 2 cores, 4 lanes ingested no faster and cost a third more CPU. SQLite always uses one.",
    )
    read_cache_max_entries: int = Field(
        10_000,  # ≈ 3.5 KB each: with 100,000 customers, 7,619 cached gave a peak RSS of 241 MB (target 300 MB)
        ge=0,
        description="Profiles kept in memory for GetProfile / GetFeatures (least recently read dropped first); "
        "this process's own writes update them, so a read is never stale after a write it committed. 0 turns "
        "the cache off.",
    )
    notify_saved_states: bool = Field(
        False,
        description="PostgreSQL, several replicas (e.g. one taking the event streams, others the reads): each "
        "replica NOTIFYs the states it saved and refills its read cache from the others', instead of reading "
        "again every customer another replica wrote. Replicas without it stay correct (they read again).",
    )
    lineage_poll_seconds: float = Field(
        2.0,
        gt=0,
        description="How often the profile reads identity's lineage journal (merges, unmerges, erasures) and "
        "applies what is new.",
    )
    segment_sweep_seconds: float = Field(
        3600.0,
        ge=0,
        description="How often the time-dependent segments (e.g. days_since_last_purchase > 30) are re-evaluated "
        "for every customer, so that membership moves without an event; 0 turns the sweep off.",
    )
    refold_outdated_seconds: float = Field(
        3600.0,
        ge=0,
        description="How often the stored states are checked for ones folded by an older release (a trait's "
        "arithmetic changed, or history a trait needs was not kept) and those are rebuilt from their events; the "
        "first check runs at start-up, so an upgrade corrects every profile by itself. 0 turns it off.",
    )
    segment_poll_seconds: float = Field(
        5.0,
        gt=0,
        description="How often the segment definitions' version is read, so that a segment put or deleted "
        "through another replica is loaded here.",
    )
