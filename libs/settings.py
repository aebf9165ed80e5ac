"""Validated settings read from environment variables, with local defaults (SQLite, localhost ports).

Each service declares one `ServiceSettings` subclass with its own prefix (e.g. `NEXTBEST_IDENTITY_`); the
settings every service shares live in `CommonSettings` (prefix `NEXTBEST_`). A malformed value stops start-up
with a message naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Settings shared by every service and tool (prefix NEXTBEST_)."""

    model_config = SettingsConfigDict(env_prefix="NEXTBEST_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Where SQLite databases, models and the catalogue live.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL shared by all services (e.g. postgresql+asyncpg://…); "
        "unset means one SQLite file per service in data_dir.",
    )
    host: str = Field("127.0.0.1", description="Interface the services bind to.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of every service.")
    log_format: Literal["json", "text"] = Field("json", description="JSON lines with trace ids, or plain text.")
    otlp_endpoint: str | None = Field(None, description="OTLP/gRPC endpoint for traces; unset means no export.")
    trace_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of traces recorded and exported (when an OTLP endpoint is set)."
    )
    shutdown_grace_seconds: float = Field(5.0, ge=0, description="How long a stopping server drains.")


class ServiceSettings(BaseSettings):
    """Base of each service's settings: its port and optional own database URL, plus the common settings."""

    model_config = SettingsConfigDict(extra="ignore")

    #: Service name, set by each subclass (also the SQLite file name and the OpenTelemetry service name).
    service_name: str = ""
    port: int = Field(0, ge=0, le=65535, description="gRPC port of this service.")
    database_url: str | None = Field(None, description="Overrides NEXTBEST_DATABASE_URL for this service only.")
    common: CommonSettings = Field(default_factory=CommonSettings)

    @property
    def resolved_database_url(self) -> str:
        """This service's database: its own URL, else the shared one, else a SQLite file in data_dir."""
        if self.database_url:
            return self.database_url
        if self.common.database_url:
            return self.common.database_url
        path = (self.common.data_dir / f"{self.service_name}.db").resolve()
        return f"sqlite+aiosqlite:///{path}"


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: object) -> S:
    """Build settings from the environment; a malformed value exits with a message naming the variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        problems = "; ".join(
            f"{prefix}{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise SystemExit(f"invalid settings for {cls.__name__}: {problems}") from None
