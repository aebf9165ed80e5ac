"""ScoringService with an in-memory registry: sync, champion choice, Score validation and one predict per call."""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.errors import FailedPrecondition, InvalidArgument, NotFound
from services.scoring.artifacts import ArtifactError, ModelStatus, load_booster
from services.scoring.domain import OfferCandidate, RegisteredModel, ScoringService
from services.scoring.training import train_binary_model
from tests.unit.test_scoring_training import FEATURES, synthetic_dataset

pytestmark = pytest.mark.unit

USE_CASE = "offer_propensity"


class InMemoryRegistry:
    """A `ModelRegistry` over a dict, ordered like the SQL adapter."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], RegisteredModel] = {}

    async def registered_keys(self) -> set[tuple[str, str]]:
        return set(self.rows)

    async def register(self, models: Sequence[RegisteredModel]) -> None:
        for model in models:
            self.rows.setdefault((model.use_case, model.version), model)

    async def models(self, use_case: str | None = None) -> list[RegisteredModel]:
        chosen = [m for m in self.rows.values() if use_case is None or m.use_case == use_case]
        chosen.sort(key=lambda m: (m.registered_at, m.trained_at, m.version), reverse=True)
        return sorted(chosen, key=lambda m: m.use_case)  # stable: newest first within a use case


class CountingBooster:
    """Wraps a real booster to count model calls."""

    def __init__(self, booster) -> None:
        self.booster = booster
        self.calls: list[tuple[int, int]] = []

    def inplace_predict(self, matrix, **kwargs):
        self.calls.append(matrix.shape)
        return self.booster.inplace_predict(matrix, **kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Three versions: v1 champion, v2 challenger, v3 champion (trained in that order)."""
    root = tmp_path_factory.mktemp("models")
    rows, labels = synthetic_dataset(300)
    for version, status in (("v1", "champion"), ("v2", "challenger"), ("v3", "champion")):
        train_binary_model(rows, labels, feature_names=FEATURES, models_dir=root, version=version, status=status)
    return root


def service_for(models_dir: Path, registry: InMemoryRegistry | None = None, max_candidates: int = 5):
    boosters: list[CountingBooster] = []

    def loader(folder: Path, names: Sequence[str]) -> CountingBooster:
        boosters.append(CountingBooster(load_booster(folder, names, nthread=1)))
        return boosters[-1]

    service = ScoringService(
        registry or InMemoryRegistry(),
        models_dir,
        default_use_case=USE_CASE,
        max_candidates=max_candidates,
        clock=Clock(),
        loader=loader,
    )
    return service, boosters


def offers(*values: float) -> list[OfferCandidate]:
    return [OfferCandidate(f"o-{i}", {"offer_value": value}) for i, value in enumerate(values)]


async def test_refresh_registers_every_folder_once_and_serves_the_newest_champion(trained):
    registry = InMemoryRegistry()
    service, _ = service_for(trained, registry)
    await service.refresh()
    assert {(m.version, m.status) for m in registry.rows.values()} == {
        ("v1", ModelStatus.CHAMPION),
        ("v2", ModelStatus.CHALLENGER),
        ("v3", ModelStatus.CHAMPION),
    }
    assert registry.rows[(USE_CASE, "v1")].artifact_path == f"{USE_CASE}/v1"
    assert service.champions[USE_CASE].model.version == "v3"
    first_seen = {key: m.registered_at for key, m in registry.rows.items()}
    await service.refresh()  # a restart: nothing new to register
    assert {key: m.registered_at for key, m in registry.rows.items()} == first_seen
    assert [m.version for m in await service.list_models("")] == ["v3", "v2", "v1"]


async def test_a_champion_registered_later_takes_over_on_refresh(trained, tmp_path):
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    service, _ = service_for(tmp_path)
    await service.refresh()
    rows, labels = synthetic_dataset(120)
    older = train_binary_model(rows, labels, feature_names=FEATURES, models_dir=tmp_path, version="v0")
    await service.refresh()
    # v0 sorts first by name but was registered last: it is the newest registration, so it serves.
    assert service.champions[USE_CASE].model.version == older.version == "v0"


async def test_score_uses_one_model_call_and_ranks_as_the_truth_implies(trained):
    service, boosters = service_for(trained)
    await service.refresh()
    scores = service.score("", {"loyalty": 0.0, "noise": 0.1}, offers(-2.0, 2.0, 0.3))
    assert (scores.model_name, scores.model_version) == ("offer-propensity-xgb", "v3")
    assert scores.offer_ids == ["o-0", "o-1", "o-2"]
    low, high, middle = scores.probabilities
    assert 0 < low < middle < high < 1
    assert boosters[-1].calls == [(3, len(FEATURES))]
    # Missing and unknown features are fine: the customer sent nothing the model knows.
    assert len(service.score(USE_CASE, {"favourite_colour": 3.0}, offers(1.0)).probabilities) == 1


@pytest.mark.parametrize(
    ("customer", "candidates", "field"),
    [
        ({}, [], "candidates"),
        ({}, offers(*range(6)), "candidates"),
        ({}, [OfferCandidate("o-0", {}), OfferCandidate(" ", {})], "candidates[1].offer_id"),
        ({"loyalty": math.inf}, offers(1.0), "customer_features[loyalty]"),
        ({}, [*offers(1.0, 2.0, 3.0), OfferCandidate("o-3", {"offer_value": -math.inf})], "candidates[3].offer_features[offer_value]"),
    ],
)
async def test_bad_requests_name_the_field_and_never_reach_the_model(trained, customer, candidates, field):
    service, boosters = service_for(trained)
    await service.refresh()
    with pytest.raises(InvalidArgument) as error:
        service.score("", customer, candidates)
    assert error.value.field == field
    assert boosters[-1].calls == []


async def test_unknown_use_case_is_not_found_and_a_use_case_without_champion_is_a_failed_precondition(trained, tmp_path):
    service, _ = service_for(trained)
    await service.refresh()
    with pytest.raises(NotFound, match="churn"):
        service.score("churn", {}, offers(1.0))

    shutil.copytree(trained / USE_CASE / "v2", tmp_path / USE_CASE / "v2")  # only the challenger
    lonely, _ = service_for(tmp_path)
    await lonely.refresh()
    with pytest.raises(FailedPrecondition, match="no champion model for use case offer_propensity"):
        lonely.score("", {}, offers(1.0))

    empty, _ = service_for(tmp_path / "nothing-here")
    await empty.refresh()  # starts with no models at all
    with pytest.raises(FailedPrecondition, match="no champion model for use case offer_propensity"):
        empty.score("", {}, offers(1.0))


async def test_a_failed_refresh_keeps_serving_the_previous_champion(trained, tmp_path):
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    service, _ = service_for(tmp_path)
    await service.refresh()
    shutil.rmtree(tmp_path / USE_CASE / "v3")  # the registered champion's artifact is gone
    with pytest.raises(ArtifactError, match="cannot be loaded"):
        await service.refresh()
    assert service.score("", {}, offers(1.0)).model_version == "v3"
