"""Model artifacts: `{models_dir}/{use_case}/{version}/model.ubj` plus `metadata.json`, behind `ArtifactStore`.

Pure file I/O (no gRPC, no database). The layout is a flat key space (`{use_case}/{version}/{file}`) so it can later
map onto an object store: the rest of the service reaches artifacts only through the `ArtifactStore` port, whose
local-directory adapter is `LocalArtifactStore`. A folder is written under a hidden temporary name and renamed into
place, so a reader never sees a half-written artifact: a folder either has both files or is not listed.

`metadata.json` is the model card that travels with the model: the feature schema (names, types, order, categorical
levels), training window and row counts, metrics, parameters, the parent version and free-form evaluation tables.
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
from typing import Any, Protocol

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


class FeatureKind(StrEnum):
    """How a request sends a feature: a number, or one of a fixed set of levels (text)."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


#: Separates a categorical feature from its level in the one-hot column names, e.g. `job=admin.`.
LEVEL_SEPARATOR = "="


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One input feature of a model. A categorical feature is one-hot encoded: one model column per level."""

    name: str
    kind: FeatureKind = FeatureKind.NUMERIC
    levels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or LEVEL_SEPARATOR in self.name:
            raise ValueError(f"feature name {self.name!r} must be non-empty and not contain {LEVEL_SEPARATOR!r}")
        if self.kind is FeatureKind.CATEGORICAL:
            if not self.levels or len(set(self.levels)) != len(self.levels):
                raise ValueError(f"categorical feature {self.name} needs unique levels")
        elif self.levels:
            raise ValueError(f"numeric feature {self.name} cannot have levels")

    @property
    def columns(self) -> tuple[str, ...]:
        """The model matrix columns this feature fills, in order."""
        if self.kind is FeatureKind.NUMERIC:
            return (self.name,)
        return tuple(f"{self.name}{LEVEL_SEPARATOR}{level}" for level in self.levels)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"name": self.name, "type": self.kind.value}
        if self.levels:
            document["levels"] = list(self.levels)
        return document

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(str(data["name"]), FeatureKind(data.get("type", "numeric")), tuple(map(str, data.get("levels") or ())))


def numeric_features(names: Sequence[str]) -> tuple[FeatureSpec, ...]:
    return tuple(FeatureSpec(name) for name in names)


def model_columns(features: Sequence[FeatureSpec]) -> tuple[str, ...]:
    return tuple(column for spec in features for column in spec.columns)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: str, what: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{what} must carry a UTC offset (ISO-8601, e.g. 2024-05-01T12:00:00Z)")
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What `metadata.json` holds about one trained model version (its model card)."""

    name: str
    use_case: str
    version: str
    status: ModelStatus
    feature_names: tuple[str, ...]  # the model's matrix columns, in order
    metrics: dict[str, float]
    training_rows: int
    trained_at: datetime  # aware, UTC
    params: dict[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    #: The input features; left empty, one numeric feature per column of `feature_names` (older artifacts).
    features: tuple[FeatureSpec, ...] = ()
    #: Whether a request may leave features out (they become missing values, as in training).
    allows_missing: bool = True
    #: [start, end) of the data the model was trained on, when the data had times.
    training_window: tuple[datetime, datetime] | None = None
    #: Rows per split, e.g. {"train": 800, "validation": 100, "test": 100}.
    row_counts: dict[str, int] = field(default_factory=dict)
    #: Evaluation tables and provenance (calibration, lift, baseline, data source): JSON-serialisable.
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _segment(self.use_case, "use_case")
        _segment(self.version, "version")
        if not 0 < len(self.name) <= MAX_NAME_LENGTH:
            raise ValueError(f"name must be 1-{MAX_NAME_LENGTH} characters")
        check_feature_names(self.feature_names)
        if not self.features:  # an artifact written before schemas: every column is a numeric feature
            object.__setattr__(self, "features", numeric_features(self.feature_names))
        else:
            if len({spec.name for spec in self.features}) != len(self.features):
                raise ValueError("feature schema names must be unique")
            if model_columns(self.features) != tuple(self.feature_names):
                raise ValueError("feature_names must be the columns of the feature schema, in order")
        if not all(math.isfinite(value) for value in self.metrics.values()):
            raise ValueError("metrics must be finite numbers")
        if self.training_rows < 0:
            raise ValueError("training_rows must not be negative")
        if self.trained_at.tzinfo is None:
            raise ValueError("trained_at must be timezone-aware (UTC)")
        if self.training_window is not None:
            start, end = self.training_window
            if start.tzinfo is None or end.tzinfo is None or end < start:
                raise ValueError("training_window must be two aware times, start <= end")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "use_case": self.use_case,
            "version": self.version,
            "status": self.status.value,
            "feature_names": list(self.feature_names),
            "features": [spec.to_json() for spec in self.features],
            "allows_missing": self.allows_missing,
            "metrics": self.metrics,
            "training_rows": self.training_rows,
            "row_counts": self.row_counts,
            "training_window": (
                None if self.training_window is None else {"start": _iso(self.training_window[0]),
                                                           "end": _iso(self.training_window[1])}
            ),
            "trained_at": _iso(self.trained_at),
            "params": self.params,
            "parent_version": self.parent_version,
            "card": self.card,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelMetadata:
        """Parses a metadata document; raises ValueError, KeyError or TypeError naming the problem."""
        parent = data.get("parent_version")
        window = data.get("training_window")
        return cls(
            name=str(data["name"]),
            use_case=data["use_case"],
            version=data["version"],
            status=ModelStatus(data["status"]),
            feature_names=tuple(data["feature_names"]),
            metrics={str(k): float(v) for k, v in dict(data.get("metrics") or {}).items()},
            training_rows=int(data["training_rows"]),
            trained_at=_parse_time(data["trained_at"], "trained_at"),
            params=dict(data.get("params") or {}),
            parent_version=str(parent) if parent is not None else None,
            features=tuple(FeatureSpec.from_json(spec) for spec in data.get("features") or ()),
            allows_missing=bool(data.get("allows_missing", True)),
            training_window=(
                None if not window else (_parse_time(window["start"], "training_window.start"),
                                         _parse_time(window["end"], "training_window.end"))
            ),
            row_counts={str(k): int(v) for k, v in dict(data.get("row_counts") or {}).items()},
            card=dict(data.get("card") or {}),
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



class ArtifactStore(Protocol):
    """Where model artifacts live, addressed by `{use_case}/{version}` keys (synchronous: call it off the loop)."""

    def write(self, metadata: ModelMetadata, booster: xgb.Booster) -> str:
        """Saves a new version; returns its key. Never overwrites an existing version."""
        ...

    def list(self) -> list[Artifact]:
        """Every complete artifact in the store."""
        ...

    def load(self, key: str, feature_names: Sequence[str], *, nthread: int = 1) -> xgb.Booster:
        """The booster of one key, checked against the expected matrix columns."""
        ...

    def read_metadata(self, key: str) -> ModelMetadata:
        """The metadata document of one key."""
        ...


class LocalArtifactStore:
    """`ArtifactStore` on a local directory (the default; an object-store adapter maps the same keys to objects)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    def _folder(self, key: str) -> Path:
        use_case, _, version = key.partition("/")
        return artifact_dir(self.root, use_case, version)

    def write(self, metadata: ModelMetadata, booster: xgb.Booster) -> str:
        write_artifact(self.root, metadata, booster)
        return relative_key(metadata.use_case, metadata.version)

    def list(self) -> list[Artifact]:
        return list_artifacts(self.root)

    def load(self, key: str, feature_names: Sequence[str], *, nthread: int = 1) -> xgb.Booster:
        return load_booster(self._folder(key), feature_names, nthread=nthread)

    def read_metadata(self, key: str) -> ModelMetadata:
        return read_metadata(self._folder(key))
