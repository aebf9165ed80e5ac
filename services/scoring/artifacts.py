"""Model artifacts on disk: `{models_dir}/{use_case}/{version}/model.ubj` plus `metadata.json`.

Pure file I/O (no gRPC, no database). The layout is a flat key space (`{use_case}/{version}/{file}`) so it can later
map onto an object store. A folder is written under a hidden temporary name and renamed into place, so a reader
never sees a half-written artifact: a folder either has both files or is not listed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import xgboost as xgb

MODEL_FILE = "model.ubj"
METADATA_FILE = "metadata.json"

MAX_NAME_LENGTH = 128
#: Use cases and versions are path segments (and object-store key parts): no separators, no dot-files.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ArtifactError(ValueError):
    """An artifact folder is malformed or missing a file; the message names the folder."""


class ModelStatus(StrEnum):
    """A model version's place in its lifecycle."""

    CANDIDATE = "candidate"
    CHALLENGER = "challenger"
    CHAMPION = "champion"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What `metadata.json` holds about one trained model version."""

    name: str
    use_case: str
    version: str
    status: ModelStatus
    feature_names: tuple[str, ...]  # the model's column order
    metrics: dict[str, float]
    training_rows: int
    trained_at: datetime  # aware, UTC
    params: dict[str, Any] = field(default_factory=dict)
    parent_version: str | None = None

    def __post_init__(self) -> None:
        _segment(self.use_case, "use_case")
        _segment(self.version, "version")
        if not 0 < len(self.name) <= MAX_NAME_LENGTH:
            raise ValueError(f"name must be 1-{MAX_NAME_LENGTH} characters")
        check_feature_names(self.feature_names)
        if not all(math.isfinite(value) for value in self.metrics.values()):
            raise ValueError("metrics must be finite numbers")
        if self.training_rows < 0:
            raise ValueError("training_rows must not be negative")
        if self.trained_at.tzinfo is None:
            raise ValueError("trained_at must be timezone-aware (UTC)")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "use_case": self.use_case,
            "version": self.version,
            "status": self.status.value,
            "feature_names": list(self.feature_names),
            "metrics": self.metrics,
            "training_rows": self.training_rows,
            "trained_at": self.trained_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "params": self.params,
            "parent_version": self.parent_version,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelMetadata:
        """Parses a metadata document; raises ValueError, KeyError or TypeError naming the problem."""
        trained_at = datetime.fromisoformat(data["trained_at"])
        if trained_at.tzinfo is None:
            raise ValueError("trained_at must carry a UTC offset (ISO-8601, e.g. 2024-05-01T12:00:00Z)")
        parent = data.get("parent_version")
        return cls(
            name=str(data["name"]),
            use_case=data["use_case"],
            version=data["version"],
            status=ModelStatus(data["status"]),
            feature_names=tuple(data["feature_names"]),
            metrics={str(k): float(v) for k, v in dict(data.get("metrics") or {}).items()},
            training_rows=int(data["training_rows"]),
            trained_at=trained_at.astimezone(UTC),
            params=dict(data.get("params") or {}),
            parent_version=str(parent) if parent is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Artifact:
    """One artifact folder found on disk."""

    path: Path
    metadata: ModelMetadata

    @property
    def key(self) -> str:
        """The folder relative to models_dir, as stored in the registry (an object-store style key)."""
        return relative_key(self.metadata.use_case, self.metadata.version)


def _segment(value: object, what: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise ValueError(f"{what} {value!r} must be 1-64 letters, digits, '.', '_' or '-', not starting with a symbol")
    return value


def check_feature_names(names: Sequence[str]) -> None:
    """A model's feature names: at least one, each a non-empty string, no duplicates."""
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError("feature_names must be a non-empty list of non-empty strings")
    if len(set(names)) != len(names):
        raise ValueError("feature_names must be unique")


def relative_key(use_case: str, version: str) -> str:
    return f"{_segment(use_case, 'use_case')}/{_segment(version, 'version')}"


def artifact_dir(models_dir: Path, use_case: str, version: str) -> Path:
    return models_dir / relative_key(use_case, version)


def write_artifact(models_dir: Path, metadata: ModelMetadata, booster: xgb.Booster) -> Path:
    """Saves the model (UBJ) and its metadata as a new folder; refuses to overwrite an existing version."""
    target = artifact_dir(models_dir, metadata.use_case, metadata.version)
    if target.exists():
        raise FileExistsError(f"model artifact {target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{metadata.version}-", dir=target.parent))
    try:
        booster.save_model(staging / MODEL_FILE)
        (staging / METADATA_FILE).write_text(json.dumps(metadata.to_json(), indent=2, allow_nan=False) + "\n")
        os.rename(staging, target)  # atomic within one file system: the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_metadata(folder: Path) -> ModelMetadata:
    """The metadata of one artifact folder, checked against the folder's place in the layout."""
    try:
        metadata = ModelMetadata.from_json(json.loads((folder / METADATA_FILE).read_text()))
    except FileNotFoundError:
        raise ArtifactError(f"{folder}: no {METADATA_FILE}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{folder / METADATA_FILE}: malformed ({exc!r})") from None
    if (metadata.use_case, metadata.version) != (folder.parent.name, folder.name):
        raise ArtifactError(
            f"{folder}: metadata says {metadata.use_case}/{metadata.version}, which is not where the folder is"
        )
    if not (folder / MODEL_FILE).is_file():
        raise ArtifactError(f"{folder}: no {MODEL_FILE}")
    return metadata


def list_artifacts(models_dir: Path) -> list[Artifact]:
    """Every artifact folder under models_dir (hidden staging folders skipped), sorted by use case and version."""
    if not models_dir.is_dir():
        return []
    found = []
    for use_case_dir in sorted(models_dir.iterdir()):
        if not use_case_dir.is_dir() or use_case_dir.name.startswith("."):
            continue
        for folder in sorted(use_case_dir.iterdir()):
            if folder.is_dir() and not folder.name.startswith(".") and (folder / METADATA_FILE).exists():
                found.append(Artifact(folder, read_metadata(folder)))
    return found


def load_booster(folder: Path, feature_names: Sequence[str], *, nthread: int = 1) -> xgb.Booster:
    """Loads the UBJ model for serving; checks that it expects exactly `feature_names`, in that order."""
    try:
        booster = xgb.Booster(params={"nthread": nthread}, model_file=str(folder / MODEL_FILE))
    except xgb.core.XGBoostError as exc:
        raise ArtifactError(f"{folder / MODEL_FILE}: cannot be loaded ({exc})") from None
    if booster.num_features() != len(feature_names) or (
        booster.feature_names is not None and list(booster.feature_names) != list(feature_names)
    ):
        raise ArtifactError(f"{folder}: {MODEL_FILE} and {METADATA_FILE} disagree on the features")
    return booster

