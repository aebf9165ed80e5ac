"""ScoringService on a real SQLite registry: import, champion choice, Score validation and one predict per call."""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.db import create_engine, migrate
from libs.errors import FailedPrecondition, InvalidArgument, NotFound
from services.scoring.artifacts import ArtifactError, LocalArtifactStore, ModelStatus
from services.scoring.domain import OfferCandidate, ScoringService
from services.scoring.storage import SqlModelRegistry
from services.scoring.training import train_binary_model
from tests.unit.test_scoring_training import FEATURES, synthetic_dataset

pytestmark = pytest.mark.unit

USE_CASE = "offer_propensity"


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


MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "scoring" / "migrations"


@pytest.fixture
async def service_for(tmp_path):
    """`await await service_for(models_dir)`: a ScoringService on its own fresh, migrated SQLite registry."""
    engines = []

    async def make(models_dir: Path, max_candidates: int = 5):
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / f'registry-{len(engines)}.db'}")
        engines.append(engine)
        await migrate(engine, MIGRATIONS, "alembic_version_scoring")
        store = LocalArtifactStore(models_dir)
        boosters: list[CountingBooster] = []

        def loader(key: str, names: Sequence[str]) -> CountingBooster:
            boosters.append(CountingBooster(store.load(key, names, nthread=1)))
            return boosters[-1]

        service = ScoringService(
            SqlModelRegistry(engine), store, default_use_case=USE_CASE, max_candidates=max_candidates, clock=Clock(),
            loader=loader,
        )
        return service, boosters

    yield make
    for engine in engines:
        await engine.dispose()


def offers(*values: float) -> list[OfferCandidate]:
    return [OfferCandidate(f"o-{i}", {"offer_value": value}) for i, value in enumerate(values)]


async def test_refresh_registers_every_folder_once_and_the_newest_champion_folder_wins(trained, service_for):
    service, _ = await service_for(trained)
    await service.refresh()
    rows = {m.version: m for m in await service.list_models("")}
    # Two champion folders: the newest trained takes the role, the other is registered retired.
    assert {(v, m.status) for v, m in rows.items()} == {
        ("v1", ModelStatus.RETIRED),
        ("v2", ModelStatus.CHALLENGER),
        ("v3", ModelStatus.CHAMPION),
    }
    assert rows["v1"].artifact_path == f"{USE_CASE}/v1" and rows["v2"].traffic_share == 0.1
    assert service.champions[USE_CASE].model.version == "v3"
    first_seen = {v: m.registered_at for v, m in rows.items()}
    await service.refresh()  # a restart: nothing new to register
    assert {m.version: m.registered_at for m in await service.list_models("")} == first_seen
    assert [m.version for m in await service.list_models("")] == ["v3", "v2", "v1"]


async def test_a_champion_registered_later_takes_over_on_refresh(trained, tmp_path, service_for):
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    service, _ = await service_for(tmp_path)
    await service.refresh()
    rows, labels = synthetic_dataset(120)
    older = train_binary_model(rows, labels, feature_names=FEATURES, models_dir=tmp_path, version="v0")
    await service.refresh()
    # v0 sorts first by name but was registered last: it is the newest registration, so it serves.
    assert service.champions[USE_CASE].model.version == older.version == "v0"


async def test_score_uses_one_model_call_and_ranks_as_the_truth_implies(trained, service_for):
    service, _ = await service_for(trained)
    await service.refresh()
    scores = service.score("", {"loyalty": 0.0, "noise": 0.1}, offers(-2.0, 2.0, 0.3))
    assert (scores.model_name, scores.model_version) == ("offer-propensity-xgb", "v3")
    assert scores.offer_ids == ["o-0", "o-1", "o-2"]
    low, high, middle = scores.probabilities
    assert 0 < low < middle < high < 1
    assert service.champions[USE_CASE].booster.calls == [(3, len(FEATURES))]
    # Missing features are fine (NaN); a feature the model does not know is refused by name.
    assert len(service.score(USE_CASE, {}, offers(1.0)).probabilities) == 1
    with pytest.raises(InvalidArgument) as error:
        service.score(USE_CASE, {"favourite_colour": 3.0}, offers(1.0))
    assert (error.value.field, error.value.reason) == (
        "customer_features[favourite_colour]", "is not a feature of model offer_propensity/v3")


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
async def test_bad_requests_name_the_field_and_never_reach_the_model(trained, customer, candidates, field, service_for):
    service, _ = await service_for(trained)
    await service.refresh()
    with pytest.raises(InvalidArgument) as error:
        service.score("", customer, candidates)
    assert error.value.field == field
    assert service.champions[USE_CASE].booster.calls == []


async def test_unknown_use_case_is_not_found_and_a_use_case_without_champion_is_a_failed_precondition(trained, tmp_path, service_for):
    service, _ = await service_for(trained)
    await service.refresh()
    with pytest.raises(NotFound, match="churn"):
        service.score("churn", {}, offers(1.0))

    shutil.copytree(trained / USE_CASE / "v2", tmp_path / USE_CASE / "v2")  # only the challenger
    lonely, _ = await service_for(tmp_path)
    await lonely.refresh()
    with pytest.raises(FailedPrecondition, match="no champion model for use case offer_propensity"):
        lonely.score("", {}, offers(1.0))

    empty, _ = await service_for(tmp_path / "nothing-here")
    await empty.refresh()  # starts with no models at all
    with pytest.raises(FailedPrecondition, match="no champion model for use case offer_propensity"):
        empty.score("", {}, offers(1.0))


async def test_a_version_that_cannot_load_is_never_served(trained, tmp_path, service_for):
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    service, _ = await service_for(tmp_path)
    await service.refresh()
    shutil.rmtree(tmp_path / USE_CASE / "v1")  # the retired v1's artifact is gone
    # Through the service: the promotion is refused before the registry changes.
    with pytest.raises(ArtifactError, match="cannot be loaded"):
        await service.promote(USE_CASE, "v1", ModelStatus.CHAMPION)
    assert (await service.get_model(USE_CASE, "v1")).status is ModelStatus.RETIRED
    # Behind its back (another process promoted it): the sync fails and the loaded champion keeps serving.
    await service.registry.promote(USE_CASE, "v1", ModelStatus.CHAMPION, 0.0, service.clock())
    with pytest.raises(ArtifactError, match="cannot be loaded"):
        await service.sync()
    assert service.score("", {}, offers(1.0)).model_version == "v3"


async def test_promotion_and_retirement_rules(trained, tmp_path, service_for):
    service, _ = await service_for(trained)
    await service.refresh()
    with pytest.raises(InvalidArgument, match="traffic_share: only a challenger"):
        await service.promote(USE_CASE, "v1", ModelStatus.CHAMPION, 0.2)
    with pytest.raises(InvalidArgument, match="target"):
        await service.promote(USE_CASE, "v1", ModelStatus.CANDIDATE)
    with pytest.raises(NotFound):
        await service.retire(USE_CASE, "nope")
    model, replaced = await service.promote(USE_CASE, "v1", ModelStatus.CHALLENGER, 0.25)
    assert (model.status, model.traffic_share, replaced) == (ModelStatus.CHALLENGER, 0.25, "v2")
    assert (await service.get_model(USE_CASE, "v2")).status is ModelStatus.CANDIDATE
    slot = service.state.slots[USE_CASE]
    assert (slot.champion.model.version, slot.challenger.model.version, slot.share) == ("v3", "v1", 0.25)
    retired = await service.retire(USE_CASE, "v1")
    assert retired.status is ModelStatus.RETIRED and service.state.slots[USE_CASE].challenger is None
    with pytest.raises(FailedPrecondition, match="is the champion"):
        await service.retire(USE_CASE, "v3")
