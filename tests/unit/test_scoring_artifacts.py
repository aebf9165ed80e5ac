"""Model artifact folders: round trip, the layout check, hidden staging folders, malformed metadata."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
import xgboost as xgb

from services.scoring.artifacts import (
    METADATA_FILE,
    MODEL_FILE,
    ArtifactError,
    ModelMetadata,
    ModelStatus,
    artifact_dir,
    list_artifacts,
    load_booster,
    read_metadata,
    write_artifact,
)

pytestmark = pytest.mark.unit

FEATURES = ("recency_days", "offer_value")


def tiny_booster(feature_names=FEATURES) -> xgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, len(feature_names))).astype(np.float32)
    y = (x[:, 1] > 0).astype(np.float32)
    data = xgb.DMatrix(x, label=y, feature_names=list(feature_names))
    return xgb.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1}, data, num_boost_round=3)


def metadata(version="20250102-030405-abc123", status=ModelStatus.CHAMPION, **changes) -> ModelMetadata:
    fields = dict(
        name="offer-propensity-xgb",
        use_case="offer_propensity",
        version=version,
        status=status,
        feature_names=FEATURES,
        metrics={"auc": 0.91, "logloss": 0.3},
        training_rows=1234,
        trained_at=datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        params={"max_depth": 2},
        parent_version="20250101-000000-000000",
    )
    return ModelMetadata(**(fields | changes))


def test_round_trip_keeps_every_field_and_the_model(tmp_path):
    booster = tiny_booster()
    written = metadata()
    folder = write_artifact(tmp_path, written, booster)

    assert folder == tmp_path / "offer_propensity" / written.version
    assert sorted(p.name for p in folder.iterdir()) == [METADATA_FILE, MODEL_FILE]
    document = json.loads((folder / METADATA_FILE).read_text())
    assert document["trained_at"] == "2025-01-02T03:04:05.678000Z" and document["status"] == "champion"
    assert read_metadata(folder) == written
    [artifact] = list_artifacts(tmp_path)
    assert artifact.path == folder and artifact.metadata == written and artifact.key == f"offer_propensity/{written.version}"

    loaded = load_booster(folder, FEATURES)
    x = np.array([[1.0, -1.0], [0.0, 2.0]], dtype=np.float32)
    assert np.allclose(loaded.inplace_predict(x), booster.inplace_predict(x))


def test_listing_skips_staging_folders_and_folders_without_metadata(tmp_path):
    write_artifact(tmp_path, metadata("v2"), tiny_booster())
    write_artifact(tmp_path, metadata("v1", ModelStatus.RETIRED), tiny_booster())
    (tmp_path / "offer_propensity" / ".v3-tmp1234").mkdir()  # a write in progress
    (tmp_path / "offer_propensity" / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a use case")
    assert [a.metadata.version for a in list_artifacts(tmp_path)] == ["v1", "v2"]
    assert list_artifacts(tmp_path / "nowhere") == []


def test_a_version_is_never_overwritten(tmp_path):
    write_artifact(tmp_path, metadata("v1"), tiny_booster())
    with pytest.raises(FileExistsError):
        write_artifact(tmp_path, metadata("v1", ModelStatus.CANDIDATE), tiny_booster())
    assert read_metadata(artifact_dir(tmp_path, "offer_propensity", "v1")).status is ModelStatus.CHAMPION


def test_metadata_that_disagrees_with_its_folder_is_refused(tmp_path):
    folder = write_artifact(tmp_path, metadata("v1"), tiny_booster())
    moved = folder.parent / "v9"
    folder.rename(moved)
    with pytest.raises(ArtifactError, match="not where the folder is"):
        list_artifacts(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("feature_names"), "feature_names"),
        (lambda d: d.update(status="shadow"), "shadow"),
        (lambda d: d.update(trained_at="2025-01-02T03:04:05"), "UTC offset"),
        (lambda d: d.update(feature_names=["a", "a"]), "unique"),
        (lambda d: d.update(metrics={"auc": "NaN"}), "finite"),
    ],
)
def test_malformed_metadata_names_the_file(tmp_path, edit, message):
    folder = write_artifact(tmp_path, metadata("v1"), tiny_booster())
    document = json.loads((folder / METADATA_FILE).read_text())
    edit(document)
    (folder / METADATA_FILE).write_text(json.dumps(document))
    with pytest.raises(ArtifactError, match=message) as error:
        read_metadata(folder)
    assert str(folder / METADATA_FILE) in str(error.value)


def test_missing_model_file_and_feature_mismatch_are_refused(tmp_path):
    folder = write_artifact(tmp_path, metadata("v1"), tiny_booster())
    with pytest.raises(ArtifactError, match="disagree on the features"):
        load_booster(folder, ("offer_value", "recency_days"))
    (folder / MODEL_FILE).unlink()
    with pytest.raises(ArtifactError, match="no model.ubj"):
        read_metadata(folder)


@pytest.mark.parametrize("bad", ["../escape", "a/b", ".hidden", ""])
def test_use_cases_and_versions_must_be_plain_path_segments(bad):
    with pytest.raises(ValueError, match="version"):
        metadata(bad)
