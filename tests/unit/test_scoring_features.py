"""Feature-schema validation and assembly: one float32 matrix, missing features NaN, unknown ones refused by name
(or ignored when so configured), categorical features one-hot over their levels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from libs.errors import InvalidArgument
from services.scoring.artifacts import FeatureKind, FeatureSpec
from services.scoring.domain import FeatureSchema, OfferCandidate, OfferColumns

pytestmark = pytest.mark.unit


def test_customer_row_is_joined_with_each_offer_in_model_order():
    # reject_unknown=False: the lenient mode (NEXTBEST_SCORING_REJECT_UNKNOWN_FEATURES=false) ignores extra features.
    schema = FeatureSchema(["offer_value", "total_spend", "visits_30d", "offer_discount_pct"], reject_unknown=False)
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
    schema = FeatureSchema(["total_spend", "offer_value"], reject_unknown=False)
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
    with pytest.raises(ValueError, match="feature.?name"):
        FeatureSchema(names)


def test_a_feature_the_model_does_not_know_is_refused_by_name():
    schema = FeatureSchema(["total_spend", "offer_value"], model="model offer_propensity/v7")
    with pytest.raises(InvalidArgument) as error:
        schema.score_matrix({"total_spend": 1.0, "favourite_colour": 2.0}, [OfferCandidate("a", {})])
    assert str(error.value) == "customer_features[favourite_colour]: is not a feature of model offer_propensity/v7"
    with pytest.raises(InvalidArgument) as error:
        schema.score_matrix({}, [OfferCandidate("a", {"offer_value": 1.0}), OfferCandidate("b", {"offer_vlaue": 1.0})])
    assert error.value.field == "candidates[1].offer_features[offer_vlaue]"


JOB = FeatureSpec("job", FeatureKind.CATEGORICAL, ("admin", "retired", "student"))


def test_categorical_features_are_one_hot_and_unknown_levels_or_wrong_maps_are_refused():
    schema = FeatureSchema([FeatureSpec("age"), JOB])
    assert schema.names == ("age", "job=admin", "job=retired", "job=student")
    matrix = schema.score_matrix(
        {"age": 40.0},
        [OfferCandidate("a", {}), OfferCandidate("b", {}, {"job": "student"})],
        {"job": "retired"},
    )
    nan = math.nan
    assert np.array_equal(matrix, np.array([[40, 0, 1, 0], [40, 0, 0, 1]], dtype=np.float32))
    missing = schema.score_matrix({}, [OfferCandidate("a", {})])
    assert np.array_equal(missing, np.array([[nan] * 4], dtype=np.float32), equal_nan=True)
    for customer, categories, field, reason in [
        ({}, {"job": "pilot"}, "customer_categories[job]", "level 'pilot' is unknown"),
        ({"job": 1.0}, {}, "customer_features[job]", "is categorical"),
        ({}, {"age": "old"}, "customer_categories[age]", "is numeric"),
        ({}, {"colour": "red"}, "customer_categories[colour]", "is not a feature"),
    ]:
        with pytest.raises(InvalidArgument) as error:
            schema.score_matrix(customer, [OfferCandidate("a", {})], categories)
        assert error.value.field == field and error.value.reason.startswith(reason), error.value


def test_missing_values_are_refused_only_for_a_model_trained_without_them():
    strict = FeatureSchema(["age", "offer_value"], allows_missing=False, model="model churn_risk/v1")
    assert strict.score_matrix({"age": 3.0}, [OfferCandidate("a", {"offer_value": 1.0})]).shape == (1, 2)
    with pytest.raises(InvalidArgument) as error:
        strict.score_matrix({"age": 3.0}, [OfferCandidate("a", {"offer_value": 1.0}), OfferCandidate("b", {})])
    assert str(error.value) == (
        "candidates[1]: feature offer_value is missing and model churn_risk/v1 was trained without missing values")
    with pytest.raises(InvalidArgument):
        strict.score_matrix({"age": math.nan}, [OfferCandidate("a", {"offer_value": 1.0})])


def test_batch_matrix_maps_columns_by_name_and_categoricals_by_level_index():
    schema = FeatureSchema([FeatureSpec("age"), JOB, FeatureSpec("balance")])
    values = np.array([[2.0, 30.0], [math.nan, 40.0], [0.0, 50.0]])
    matrix = schema.batch_matrix(["job", "age"], values)
    nan = math.nan
    expected = [[30, 0, 0, 1, nan], [40, nan, nan, nan, nan], [50, 1, 0, 0, nan]]
    assert np.array_equal(matrix, np.array(expected, dtype=np.float32), equal_nan=True)
    for columns, bad_values, field in [
        (["job"], np.array([[3.0]]), "values[0]"),
        (["job"], np.array([[0.5]]), "values[0]"),
        (["age", "age"], np.array([[1.0, 1.0]]), "columns[1]"),
        (["age", "height"], np.array([[1.0, 1.0]]), "columns[1]"),
        (["age", "balance"], np.array([[1.0, 2.0], [1.0, math.inf]]), "values[3]"),
    ]:
        with pytest.raises(InvalidArgument) as error:
            schema.batch_matrix(columns, bad_values)
        assert error.value.field == field


def test_offer_columns_fill_the_same_matrix_as_per_candidate_maps():
    schema = FeatureSchema(["offer_value", "total_spend", "offer_discount_pct", FeatureSpec("job", FeatureKind.CATEGORICAL,
                                                                                            ("admin", "blue-collar"))])
    customer = {"total_spend": 120.5}
    by_map = schema.score_matrix(customer, [
        OfferCandidate("o-1", {"offer_value": 10.0, "offer_discount_pct": 0.2}),
        OfferCandidate("o-2", {"offer_value": 25.0}, {"job": "admin"}),
    ])
    by_columns = schema.score_matrix(
        customer,
        [OfferCandidate("o-1", {}), OfferCandidate("o-2", {}, {"job": "admin"})],  # categories stay per candidate
        offer_columns=OfferColumns(["offer_discount_pct", "offer_value"], [0.2, 10.0, math.nan, 25.0]),
    )
    assert np.array_equal(by_map, by_columns, equal_nan=True)
    lenient = FeatureSchema(["offer_value"], reject_unknown=False)
    matrix = lenient.score_matrix({}, [OfferCandidate("a", {})], offer_columns=OfferColumns(["x", "offer_value"], [1, 2]))
    assert matrix.tolist() == [[2.0]]  # an unknown column is ignored when so configured


@pytest.mark.parametrize(
    ("candidates", "names", "values", "field", "reason"),
    [
        (2, ["offer_value"], [1.0], "offer_values", "must hold 1 values (one per offer column) for each of the 2"),
        (1, ["offer_value", "offer_value"], [1.0, 2.0], "offer_columns[1]", "offer_value appears twice"),
        (1, ["offer_vlaue"], [1.0], "offer_columns[0]", "offer_vlaue is not a feature of the model"),
        (1, ["job"], [1.0], "offer_columns[0]", "job is categorical in this model"),
        (2, ["offer_value", "total_spend"], [1.0, 2.0, 3.0, -math.inf], "offer_values[3]", "total_spend must be finite"),
        (1, [], [1.0], "offer_values", "must be empty when offer_columns is"),
    ],
)
def test_bad_offer_columns_are_refused_naming_the_field(candidates, names, values, field, reason):
    schema = FeatureSchema(["offer_value", "total_spend", FeatureSpec("job", FeatureKind.CATEGORICAL, ("admin",))])
    offers = [OfferCandidate(f"o-{i}", {}) for i in range(candidates)]
    with pytest.raises(InvalidArgument) as error:
        schema.score_matrix({}, offers, offer_columns=OfferColumns(names, values))
    assert error.value.field == field and error.value.reason.startswith(reason)


def test_offer_columns_and_per_candidate_maps_are_not_mixed():
    schema = FeatureSchema(["offer_value"])
    with pytest.raises(InvalidArgument) as error:
        schema.score_matrix({}, [OfferCandidate("a", {}), OfferCandidate("b", {"offer_value": 1.0})],
                            offer_columns=OfferColumns(["offer_value"], [1.0, 2.0]))
    assert error.value.field == "candidates[1].offer_features"
