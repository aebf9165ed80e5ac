"""Validated settings read from environment variables, with local defaults (SQLite, localhost ports).

Each service declares one `ServiceSettings` subclass with its own prefix (e.g. `NEXTBEST_IDENTITY_`); the
settings every service shares live in `CommonSettings` (prefix `NEXTBEST_`). A malformed value stops start-up
with a message naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
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
    db_pool_size: int = Field(
        12,
        ge=1,
        le=500,
        description="PostgreSQL connections each service process keeps (a fixed pool: replicas × this must fit "
        "max_connections, or PgBouncer's pool).",
    )
    db_pool_timeout_seconds: float = Field(
        5.0, gt=0, description="How long a request waits for a free pooled PostgreSQL connection before it fails."
    )
    migrate_on_start: bool = Field(
        True,
        description="Each service migrates its tables at start-up; false when a job runs `nextbest migrate` first "
        "(compose, Kubernetes).",
    )

    @property
    def db_pool(self) -> dict[str, float]:
        """The pool arguments of `libs.db.create_engine` for a service process."""
        return {"pool_size": self.db_pool_size, "pool_timeout": self.db_pool_timeout_seconds}

    host: str = Field("127.0.0.1", description="Interface the services bind to.")
    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate (chain) of this process: with tls_key_file, every server listens with TLS "
        "and outbound channels present it as the client certificate.",
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle: channels verify servers with it; servers then require client certificates "
        "signed by it (mutual TLS).",
    )
    allow_plaintext_bind: bool = Field(
        False, description="Allow plaintext gRPC on a non-loopback host (logs a warning); off: such a start fails."
    )
    auth_keys_file: Path | None = Field(
        None,
        description="Keystore JSON (`nextbest auth …`): when set, every RPC but health and reflection needs "
        "`authorization: Bearer <API key>`; re-read when it changes. Unset: no authentication.",
    )
    auth_token: SecretStr | None = Field(
        None, description="This process's own API key, sent on every outbound call (peer services, the CLI)."
    )
    max_concurrent_rpcs: int = Field(
        256, ge=1, description="Calls a server runs at once; beyond it new calls get RESOURCE_EXHAUSTED at once."
    )
    max_request_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request message a server accepts (RESOURCE_EXHAUSTED above)."
    )
    max_connection_age_seconds: float = Field(
        0, ge=0, description="Servers ask clients to reconnect after this long (0: never), so channels re-resolve "
        "DNS and spread calls over replicas added since; open streams are left to finish.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of every service.")
    log_format: Literal["json", "text"] = Field("json", description="JSON lines with trace ids, or plain text.")
    otlp_endpoint: str | None = Field(
        None, description="OTLP/gRPC endpoint for traces and metrics; unset means neither is recorded."
    )
    trace_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of traces recorded and exported (when an OTLP endpoint is set)."
    )
    metrics_export_seconds: float = Field(
        15.0, gt=0, description="How often metrics are exported over OTLP (when an OTLP endpoint is set)."
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
