"""Feature assembly for one Score call: one float32 matrix, missing features NaN, unknown ones ignored."""

from __future__ import annotations

import math

import numpy as np
import pytest

from libs.errors import InvalidArgument
from services.scoring.domain import FeatureSchema, OfferCandidate

pytestmark = pytest.mark.unit


def test_customer_row_is_joined_with_each_offer_in_model_order():
    schema = FeatureSchema(["offer_value", "total_spend", "visits_30d", "offer_discount_pct"])
    matrix = schema.score_matrix(
        {"total_spend": 120.5, "visits_30d": 3, "favourite_colour": 7.0},  # favourite_colour: not in the model
        [
            OfferCandidate("o-1", {"offer_value": 10.0, "offer_discount_pct": 0.2}),
            OfferCandidate("o-2", {"offer_value": 25.0, "unknown_offer_feature": 1.0}),
            OfferCandidate("o-3", {}),
        ],
    )
    assert matrix.dtype == np.float32 and matrix.shape == (3, 4)
    nan = math.nan
    expected = np.array(
        [[10.0, 120.5, 3, 0.2], [25.0, 120.5, 3, nan], [nan, 120.5, 3, nan]],
        dtype=np.float32,
    )
    assert np.array_equal(matrix, expected, equal_nan=True)


def test_an_offer_feature_overrides_a_customer_feature_of_the_same_name_for_its_row_only():
    schema = FeatureSchema(["ctx_dwell_seconds"])
    matrix = schema.score_matrix(
        {"ctx_dwell_seconds": 5.0},
        [OfferCandidate("a", {"ctx_dwell_seconds": 60.0}), OfferCandidate("b", {})],
    )
    assert matrix[:, 0].tolist() == [60.0, 5.0]


def test_nan_is_missing_but_infinity_anywhere_is_rejected_by_name_even_in_ignored_features():
    schema = FeatureSchema(["total_spend", "offer_value"])
    matrix = schema.score_matrix({"total_spend": math.nan}, [OfferCandidate("a", {"offer_value": 1.0})])
    assert math.isnan(matrix[0, 0]) and matrix[0, 1] == 1.0

    with pytest.raises(InvalidArgument) as error:
        schema.score_matrix({"visits": 1.0, "total_spend": -math.inf}, [OfferCandidate("a", {})])
    assert error.value.field == "customer_features[total_spend]"
    with pytest.raises(InvalidArgument) as error:
        schema.score_matrix({"not_in_model": math.inf}, [OfferCandidate("a", {})])
    assert error.value.field == "customer_features[not_in_model]"
    candidates = [OfferCandidate(f"o-{i}", {"offer_value": 1.0}) for i in range(3)]
    candidates.append(OfferCandidate("o-3", {"offer_value": 1e300}))  # finite, but inf as float32
    with pytest.raises(InvalidArgument) as error:
        schema.score_matrix({}, candidates)
    assert error.value.field == "candidates[3].offer_features[offer_value]"


def test_training_rows_fill_missing_with_nan_and_refuse_infinity():
    schema = FeatureSchema(["a", "b"])
    matrix = schema.training_matrix([{"a": 1.0}, {"b": 2.0, "c": 9.0}])
    assert np.array_equal(matrix, np.array([[1.0, math.nan], [math.nan, 2.0]], dtype=np.float32), equal_nan=True)
    with pytest.raises(ValueError, match=r"rows\[1\]\[b\]"):
        schema.training_matrix([{"a": 1.0}, {"b": math.inf}])


@pytest.mark.parametrize("names", [[], ["a", "a"], ["a", ""]])
def test_a_schema_needs_unique_non_empty_names(names):
    with pytest.raises(ValueError, match="feature_names"):
        FeatureSchema(names)
