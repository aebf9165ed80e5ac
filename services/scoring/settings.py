"""Settings of the scoring service (environment variables prefixed NEXTBEST_SCORING_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class ScoringSettings(ServiceSettings):
    """Port, database, model directory and request limits of the scoring service."""

    model_config = SettingsConfigDict(env_prefix="NEXTBEST_SCORING_", extra="ignore")

    service_name: str = "scoring"
    port: int = Field(50053, ge=0, le=65535, description="gRPC port of the scoring service.")
    models_dir: Path = Field(
        None,  # type: ignore[assignment]  # filled in from common.data_dir below, so never None after validation
        validate_default=False,
        description="Root of the model artifacts ({models_dir}/{use_case}/{version}/); "
        "unset means <NEXTBEST_DATA_DIR>/models.",
    )
    default_use_case: str = Field(
        "offer_propensity", min_length=1, description="Use case scored when a request leaves use_case empty."
    )
    max_candidates: int = Field(200, ge=1, le=10_000, description="Most candidate offers one Score call may carry.")
    registry_poll_seconds: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="How often each scoring process re-reads the model registry, so a promotion made anywhere "
        "is served everywhere within this time.",
    )
    reject_unknown_features: bool = Field(
        True,
        description="Answer INVALID_ARGUMENT when a request sends a feature the model does not know "
        "(false: ignore such features).",
    )
    auto_promote_margin: float = Field(
        0.005,
        ge=0,
        le=1,
        description="`nextbest model train --auto-promote` (scheduled retraining) promotes the new candidate only if "
        "it beats the champion on the same hold-out rows by at least this much: AUC points for classifiers (offer "
        "propensity, churn risk), a relative RMSE reduction for lifetime value (0.005 = 0.5% lower error).",
    )
    batch_chunk_rows: int = Field(
        8192, ge=1, le=1_000_000, description="Rows per streamed ScoreBatch response message (one model call each)."
    )

    @model_validator(mode="after")
    def _default_models_dir(self) -> ScoringSettings:
        if self.models_dir is None:
            self.models_dir = self.common.data_dir / "models"
        return self
