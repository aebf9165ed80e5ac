"""Model traits in the profile state: the newest prediction per use case wins whatever the arrival order, they
survive the stored document, they are validated, and they never leak into the feature vector; the rescoring job's
mapping of the lifetime-value model's inputs from profile columns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest

from libs.errors import InvalidArgument
from services.profile.domain.events import AcceptedEvent, Event, ModelPrediction, summarize
from services.profile.domain.features import COLUMN_NAMES, FEATURE_NAMES, compute_columns, compute_features
from services.profile.domain.state import ModelTrait, ProfileState
from services.profile.domain.validation import validate_event
from services.scoring.lifetime_value import LTV_FEATURES
from services.scoring.rescore import plan_for

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def prediction(version: str, value: float, at: datetime, use_case: str = "lifetime_value") -> AcceptedEvent:
    payload = ModelPrediction(use_case, "lifetime-value-xgb", version, value)
    return AcceptedEvent(f"model:{use_case}:{version}:c-1", "c-1", at, "rescore", payload)


def test_the_newest_scoring_per_use_case_is_kept_whatever_the_arrival_order():
    older, newer = prediction("v1", 100.0, NOW - timedelta(days=1)), prediction("v2", 250.0, NOW)
    churn = prediction("v7", 0.3, NOW - timedelta(days=3), use_case="churn_risk")
    for order in ([older, newer, churn], [newer, churn, older]):
        state = ProfileState()
        for event in order:
            state.apply(event, NOW)
        assert state.model_traits == {
            "lifetime_value": ModelTrait(250.0, "lifetime-value-xgb", "v2", NOW),
            "churn_risk": ModelTrait(0.3, "lifetime-value-xgb", "v7", NOW - timedelta(days=3)),
        }


def test_model_traits_survive_the_stored_document_and_stay_out_of_the_features():
    state = ProfileState()
    state.apply(prediction("v2", 250.0, NOW), NOW)
    stored = orjson.loads(orjson.dumps(state.to_document()))  # as the JSON column gives it back
    assert ProfileState.from_document(stored).model_traits == state.model_traits
    assert list(compute_features(state, NOW)) == list(FEATURE_NAMES)  # no model output fed back into models
    assert list(compute_columns(state, NOW)) == list(COLUMN_NAMES)
    assert summarize(ModelPrediction("lifetime_value", "m", "v2", 250.0)) == "model lifetime_value 250 (version v2)"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (ModelPrediction("", "m", "v1", 1.0), "model_prediction.use_case"),
        (ModelPrediction("x" * 65, "m", "v1", 1.0), "model_prediction.use_case"),
        (ModelPrediction("ltv", "m", "", 1.0), "model_prediction.model_version"),
        (ModelPrediction("ltv", "m", "v1", float("nan")), "model_prediction.value"),
        (ModelPrediction("ltv", "m", "v1", float("inf")), "model_prediction.value"),
    ],
)
def test_a_malformed_prediction_is_rejected_naming_the_field(payload, field):
    with pytest.raises(InvalidArgument) as error:
        validate_event(Event("e-1", "c-1", (), NOW, "rescore", payload), NOW)
    assert error.value.field == field


def test_a_negative_regression_prediction_is_accepted():
    validate_event(Event("e-1", "c-1", (), NOW, "rescore", ModelPrediction("ltv", "m", "v1", -3.5)), NOW)


def test_the_lifetime_value_inputs_are_derived_from_profile_columns():
    plan = plan_for(LTV_FEATURES)
    assert set(plan.profile_columns) <= set(COLUMN_NAMES)
    columns = {name: np.zeros(2) for name in plan.profile_columns}
    columns["order_count"] = np.array([4.0, 0.0])
    columns["return_count"] = np.array([1.0, 0.0])
    columns["return_rate"] = np.array([0.2, 0.0])  # the profile's: refunded money / spend
    columns["net_value"] = np.array([380.0, 0.0])
    matrix = plan.matrix(columns, LTV_FEATURES)
    row = dict(zip(LTV_FEATURES, matrix[0], strict=True))
    assert (row["return_rate"], row["returned_share"], row["net_spend"]) == (0.25, 0.2, 380.0)
    assert matrix[1][LTV_FEATURES.index("return_rate")] == 0.0  # no orders: no division by zero
    assert plan.eligible(columns).tolist() == [True, False]  # the model only knows customers who ordered


def test_a_model_on_profile_features_reads_them_by_name():
    plan = plan_for(["total_spend", "tenure_days"])
    assert plan.profile_columns == ("total_spend", "tenure_days")
    columns = {"total_spend": np.array([5.0]), "tenure_days": np.array([9.0])}
    assert plan.matrix(columns, ["total_spend", "tenure_days"]).tolist() == [[5.0, 9.0]]
