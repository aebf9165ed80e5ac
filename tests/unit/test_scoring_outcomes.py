"""Training sets from the decision log (the no-leakage rules) and the per-version comparison statistics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.scoring.outcomes import (
    LoggedDecision,
    LoggedOutcome,
    ShownOffer,
    build_training_set,
    compare_versions,
    mean_interval,
    wilson_interval,
)

pytestmark = pytest.mark.unit

T0 = datetime(2025, 6, 1, 12, tzinfo=UTC)
WINDOW = timedelta(days=7)
AS_OF = T0 + timedelta(days=30)


def decision(decision_id: str, at: datetime = T0, offers=("o1", "o2"), features=None, version="v1") -> LoggedDecision:
    return LoggedDecision(
        decision_id=decision_id,
        customer_id=f"c-{decision_id}",
        decided_at=at,
        model_version=version,
        offers=tuple(ShownOffer(o, 0.2) for o in offers),
        customer_features={"spend": 10.0} if features is None else features,
        context={"channel": "web"},
    )


def outcome(decision_id: str, offer_id: str = "o1", kind: str = "accept", after: timedelta = timedelta(hours=1),
            recorded_after: timedelta | None = None, revenue: float = 0.0, at: datetime = T0) -> LoggedOutcome:
    occurred = at + after
    return LoggedOutcome(decision_id, offer_id, kind, occurred, occurred + (recorded_after or timedelta(0)), revenue)


def offer_features(d: LoggedDecision, offer_id: str):
    return {"offer_is_o1": float(offer_id == "o1")} if offer_id != "gone" else None


def build(decisions, outcomes, as_of=AS_OF):
    return build_training_set(decisions, outcomes, window=WINDOW, as_of=as_of, offer_features=offer_features)


def labels_by_key(training) -> dict:
    return dict(zip(training.keys, training.labels, strict=True))


def test_each_shown_offer_is_a_row_labelled_by_an_accept_or_purchase_within_the_window():
    training = build([decision("d1"), decision("d2")], [outcome("d1", "o1"), outcome("d2", "o2", "purchase")])
    assert labels_by_key(training) == {("d1", "o1"): 1, ("d1", "o2"): 0, ("d2", "o1"): 0, ("d2", "o2"): 1}
    # Features: the decision's own snapshot joined to the offer's features.
    assert training.rows[0] == {"spend": 10.0, "offer_is_o1": 1.0} and training.times == [T0] * 4


def test_an_outcome_after_the_attribution_window_is_never_a_positive():
    late = outcome("d1", after=WINDOW + timedelta(seconds=1))
    on_the_edge = outcome("d2", after=WINDOW)
    training = build([decision("d1"), decision("d2")], [late, on_the_edge])
    labels = labels_by_key(training)
    assert labels[("d1", "o1")] == 0 and labels[("d2", "o1")] == 1


def test_an_outcome_before_the_decision_or_of_another_type_or_offer_does_not_count():
    training = build([decision("d1")], [
        outcome("d1", after=timedelta(minutes=-5)),  # happened before the decision: not a response to it
        outcome("d1", kind="click"),
        outcome("d1", kind="decline"),
        outcome("d1", offer_id="not-shown"),
        outcome("other-decision"),
    ])
    assert set(training.labels) == {0} and len(training.rows) == 2


def test_an_outcome_recorded_after_the_cut_off_is_not_known_at_training_time():
    as_of = T0 + timedelta(days=8)
    recorded_late = outcome("d1", recorded_after=timedelta(days=10))
    assert labels_by_key(build([decision("d1")], [recorded_late], as_of))[("d1", "o1")] == 0
    assert labels_by_key(build([decision("d1")], [recorded_late]))[("d1", "o1")] == 1  # known by AS_OF


def test_decisions_whose_window_is_still_open_are_left_out_not_counted_as_declines():
    recent = decision("recent", at=AS_OF - timedelta(days=2))
    training = build([decision("old"), recent], [])
    assert {key[0] for key in training.keys} == {"old"} and training.skipped == {"window_still_open": 1}


def test_features_come_only_from_the_decision_time_snapshot():
    # A decision logged without its snapshot is skipped (never filled from the profile as it is now).
    training = build([decision("d1", features={}), LoggedDecision("d2", "c", T0, "v1", (ShownOffer("o1", 0.1),))], [])
    assert [key[0] for key in training.keys] == ["d1", "d1"] and training.skipped == {"no_feature_snapshot": 1}
    assert training.rows[0] == {"offer_is_o1": 1.0}
    gone = build([decision("d3", offers=("o1", "gone"))], [])
    assert len(gone.rows) == 1 and gone.skipped == {"offer_not_in_catalogue": 1}


def test_wilson_and_mean_intervals():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.25 < high < 0.35  # no successes still leaves room above zero
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.404, abs=0.002) and high == pytest.approx(0.596, abs=0.002)
    mean, low, high = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and low < 2.5 < high and high - 2.5 == pytest.approx(1.96 * (1.6667 / 4) ** 0.5, rel=1e-3)


def test_compare_reports_acceptance_revenue_and_calibration_per_version():
    decisions = [decision(f"a{i}", version="v1") for i in range(10)] + [decision(f"b{i}", version="v2") for i in range(10)]
    outcomes = [outcome(f"a{i}", revenue=20.0) for i in range(2)] + [outcome(f"b{i}", revenue=10.0) for i in range(6)]
    outcomes.append(outcome("b9", after=WINDOW * 2, revenue=999.0))  # outside the window: not attributed
    v1, v2 = compare_versions(decisions, outcomes, window=WINDOW, as_of=AS_OF)
    assert (v1.model_version, v1.decisions, v1.accepted_decisions) == ("v1", 10, 2)
    assert v1.acceptance[0] == 0.2 and v1.acceptance[1] < 0.2 < v1.acceptance[2]
    assert v1.revenue_per_decision[0] == pytest.approx(4.0) and v2.revenue_per_decision[0] == pytest.approx(6.0)
    assert v2.acceptance[0] == 0.6
    # Two offers shown per decision, each predicted at 0.2: v2's offers were taken 6 of 20 times.
    assert v2.offers_shown == 20 and v2.mean_predicted == pytest.approx(0.2)
    assert v2.observed_offer_rate[0] == pytest.approx(0.3) and v2.calibration_ratio == pytest.approx(1.5)
