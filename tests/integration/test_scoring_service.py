"""The scoring service end to end: the real ServiceApp on port 0, real SQLite and PostgreSQL, real XGBoost models."""

from __future__ import annotations

import math
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nextbest.scoring.v1 import scoring_service_pb2 as pb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as pb_grpc

from libs.settings import CommonSettings
from services.scoring.app import build
from services.scoring.servicer import FULL_NAME
from services.scoring.settings import ScoringSettings
from services.scoring.training import train_binary_model
from tests.unit.test_scoring_training import FEATURES, synthetic_dataset

pytestmark = pytest.mark.integration
USE_CASE = "offer_propensity"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A models_dir with one champion, v1 (the service only reads it, so tests share it)."""
    root = tmp_path_factory.mktemp("models")
    rows, labels = synthetic_dataset(300)
    train_binary_model(rows, labels, feature_names=FEATURES, models_dir=root, version="v1")
    return root


async def start(serve, database_url: str, models_dir: Path, tmp_path: Path) -> pb_grpc.ScoringServiceStub:
    settings = ScoringSettings(
        database_url=database_url, port=0, models_dir=models_dir, common=CommonSettings(data_dir=tmp_path)
    )
    _, channel = await serve(build(settings))
    return pb_grpc.ScoringServiceStub(channel)


def score_request(*offer_values: float, use_case: str = "", **customer: float) -> pb.ScoreRequest:
    return pb.ScoreRequest(
        use_case=use_case,
        customer_id="c_123",
        customer_features=customer,
        candidates=[
            pb.Candidate(offer_id=f"o-{i}", offer_features={"offer_value": value}) for i, value in enumerate(offer_values)
        ],
    )


async def expect_error(call, code: grpc.StatusCode, details_start: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    assert error.value.details().startswith(details_start), error.value.details()


async def test_score_returns_probabilities_that_rank_as_the_truth_implies(serve, database_url, trained, tmp_path):
    stub = await start(serve, database_url, trained, tmp_path)
    reply = await stub.Score(score_request(-2.0, 2.0, 0.2, loyalty=0.0, noise=0.5), timeout=5)
    assert (reply.model_name, reply.model_version) == ("offer-propensity-xgb", "v1")
    assert reply.model_status == pb.MODEL_STATUS_CHAMPION
    assert [s.offer_id for s in reply.scores] == ["o-0", "o-1", "o-2"]
    low, high, middle = (s.probability for s in reply.scores)
    assert 0 < low < middle < high < 1
    # Loyalty raises acceptance of the same offer; NaN is a missing value, not an error.
    loyal = await stub.Score(score_request(0.0, use_case=USE_CASE, loyalty=2.0), timeout=5)
    disloyal = await stub.Score(score_request(0.0, loyalty=-2.0, noise=math.nan), timeout=5)
    assert loyal.scores[0].probability > disloyal.scores[0].probability


async def test_score_rejects_bad_input_naming_the_field(serve, database_url, trained, tmp_path):
    stub = await start(serve, database_url, trained, tmp_path)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect_error(stub.Score(score_request(), timeout=5), invalid, "candidates: at least one")
    await expect_error(stub.Score(score_request(*[0.0] * 201), timeout=5), invalid, "candidates: at most 200")
    unnamed = score_request(1.0, 2.0)
    unnamed.candidates[1].offer_id = ""
    await expect_error(stub.Score(unnamed, timeout=5), invalid, "candidates[1].offer_id: is required")
    await expect_error(
        stub.Score(score_request(1.0, loyalty=math.inf), timeout=5), invalid, "customer_features[loyalty]: must be finite"
    )
    await expect_error(
        stub.Score(score_request(1.0, 2.0, 3.0, -math.inf), timeout=5),
        invalid,
        "candidates[3].offer_features[offer_value]: must be finite",
    )
    await expect_error(
        stub.Score(score_request(1.0, use_case="churn"), timeout=5), grpc.StatusCode.NOT_FOUND, "use case churn"
    )
    # A feature the model does not know is refused by name, as is a categorical sent to a numeric feature.
    await expect_error(
        stub.Score(score_request(1.0, lifetime_orders=4), timeout=5),
        invalid,
        "customer_features[lifetime_orders]: is not a feature of model offer_propensity/v1",
    )
    unknown_offer_feature = score_request(1.0, 2.0)
    unknown_offer_feature.candidates[1].offer_features["colour"] = 1.0
    await expect_error(
        stub.Score(unknown_offer_feature, timeout=5), invalid, "candidates[1].offer_features[colour]: is not a feature"
    )
    as_category = score_request(1.0)
    as_category.customer_categories["loyalty"] = "gold"
    await expect_error(stub.Score(as_category, timeout=5), invalid, "customer_categories[loyalty]: is numeric")
    # 200 candidates is within the limit and still one call.
    assert len((await stub.Score(score_request(*[0.5] * 200), timeout=5)).scores) == 200


def as_columns(request: pb.ScoreRequest) -> pb.ScoreRequest:
    """The same request with its offer features as one packed column block (the decision service's form)."""
    dense = pb.ScoreRequest()
    dense.CopyFrom(request)
    dense.offer_columns.append("offer_value")
    for candidate in dense.candidates:
        dense.offer_values.append(candidate.offer_features.pop("offer_value"))
    return dense


async def test_offer_features_as_columns_score_exactly_as_maps_and_are_checked(serve, database_url, trained, tmp_path):
    stub = await start(serve, database_url, trained, tmp_path)
    by_map = score_request(-2.0, 2.0, math.nan, 0.2, loyalty=1.0, noise=0.5)
    dense = as_columns(by_map)
    assert len(dense.SerializeToString()) < len(by_map.SerializeToString())
    scores = (await stub.Score(dense, timeout=5)).scores
    assert scores == (await stub.Score(by_map, timeout=5)).scores
    explain = pb.ExplainRequest(customer_features=dense.customer_features, candidates=dense.candidates,
                                offer_columns=dense.offer_columns, offer_values=dense.offer_values)
    explained = await stub.Explain(explain, timeout=5)
    assert [e.probability for e in explained.explanations] == [s.probability for s in scores]

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    short = as_columns(score_request(1.0, 2.0))
    del short.offer_values[-1]
    await expect_error(stub.Score(short, timeout=5), invalid, "offer_values: must hold 1 values")
    infinite = as_columns(score_request(1.0, -math.inf))
    await expect_error(stub.Score(infinite, timeout=5), invalid, "offer_values[1]: offer_value must be finite")
    unknown = as_columns(score_request(1.0))
    unknown.offer_columns[0] = "colour"
    await expect_error(stub.Score(unknown, timeout=5), invalid, "offer_columns[0]: colour is not a feature")
    mixed = as_columns(score_request(1.0, 2.0))
    mixed.candidates[1].offer_features["offer_value"] = 2.0
    await expect_error(stub.Score(mixed, timeout=5), invalid, "candidates[1].offer_features: must be empty")


async def test_list_models_shows_the_registry_newest_first(serve, database_url, trained, tmp_path):
    models_dir = tmp_path / "models"
    shutil.copytree(trained, models_dir)
    rows, labels = synthetic_dataset(200, seed=9)
    challenger = train_binary_model(
        rows, labels, feature_names=FEATURES, models_dir=models_dir, version="v2", status="challenger", parent_version="v1"
    )
    before = datetime.now(UTC)
    stub = await start(serve, database_url, models_dir, tmp_path)

    reply = await stub.ListModels(pb.ListModelsRequest(), timeout=5)
    assert [(m.version, m.status) for m in reply.models] == [
        ("v2", pb.MODEL_STATUS_CHALLENGER),
        ("v1", pb.MODEL_STATUS_CHAMPION),
    ]
    v2 = reply.models[0]
    assert (v2.name, v2.use_case, list(v2.feature_names)) == ("offer-propensity-xgb", USE_CASE, FEATURES)
    assert v2.training_rows == challenger.training_rows == 160
    assert set(v2.metrics) >= {"auc", "logloss", "base_rate"}
    assert v2.metrics["auc"] == pytest.approx(challenger.metrics["auc"])
    trained_at = v2.trained_at.ToDatetime(tzinfo=UTC)
    assert abs(trained_at - challenger.trained_at) < timedelta(milliseconds=1) and trained_at <= before

    assert len((await stub.ListModels(pb.ListModelsRequest(use_case=USE_CASE), timeout=5)).models) == 2
    assert list((await stub.ListModels(pb.ListModelsRequest(use_case="churn"), timeout=5)).models) == []
    # The challenger is listed, but the champion serves.
    assert (await stub.Score(score_request(1.0), timeout=5)).model_version == "v1"


async def test_without_a_champion_the_service_starts_and_score_is_a_failed_precondition(serve, database_url, tmp_path):
    models_dir = tmp_path / "models"
    rows, labels = synthetic_dataset(100)
    train_binary_model(rows, labels, feature_names=FEATURES, models_dir=models_dir, version="c1", status="candidate")
    settings = ScoringSettings(database_url=database_url, port=0, models_dir=models_dir, common=CommonSettings(data_dir=tmp_path))
    _, channel = await serve(build(settings))

    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=FULL_NAME), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = pb_grpc.ScoringServiceStub(channel)
    await expect_error(
        stub.Score(score_request(1.0), timeout=5),
        grpc.StatusCode.FAILED_PRECONDITION,
        "no champion model for use case offer_propensity",
    )
    [listed] = (await stub.ListModels(pb.ListModelsRequest(), timeout=5)).models
    assert (listed.version, listed.status) == ("c1", pb.MODEL_STATUS_CANDIDATE)


async def test_a_restart_registers_only_new_folders_and_a_new_champion_folder_takes_over(serve, database_url, trained, tmp_path):
    models_dir = tmp_path / "models"
    shutil.copytree(trained, models_dir)
    first = await start(serve, database_url, models_dir, tmp_path)
    assert (await first.Score(score_request(1.0), timeout=5)).model_version == "v1"

    rows, labels = synthetic_dataset(200, seed=11)
    train_binary_model(rows, labels, feature_names=FEATURES, models_dir=models_dir, version="v2", parent_version="v1")
    second = await start(serve, database_url, models_dir, tmp_path)  # a restart (or a second replica) on the same database

    assert (await second.Score(score_request(1.0), timeout=5)).model_version == "v2"
    listed = (await second.ListModels(pb.ListModelsRequest(), timeout=5)).models
    # Exactly one champion per use case: the imported champion replaced v1, which is retired.
    assert [(m.version, m.status) for m in listed] == [("v2", pb.MODEL_STATUS_CHAMPION), ("v1", pb.MODEL_STATUS_RETIRED)]
