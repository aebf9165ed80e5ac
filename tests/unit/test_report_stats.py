"""The report's statistics against published and textbook values, and the per-group arithmetic of the report."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime, timedelta

import pytest

from cli.report import dimensions, point_in_time
from libs.stats import Moments, proportion_difference, t_quantile_95, welch_difference, wilson_interval
from services.decision.domain.report import ArmTotals, GroupTotals, report_rows

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("df", "exact", "tolerance"),
    [(1, 12.7062, 1e-4), (2, 4.3027, 1e-4), (3, 3.1824, 0.005), (5, 2.5706, 0.001), (10, 2.2281, 1e-4),
     (30, 2.0423, 1e-4), (1e6, 1.9600, 1e-4)],
)
def test_t_quantile_matches_the_tables(df, exact, tolerance):
    assert t_quantile_95(df) == pytest.approx(exact, abs=tolerance)


def test_t_quantile_between_small_dfs_errs_wide():
    assert t_quantile_95(1.5) > 6.0167 and t_quantile_95(2.5) > 3.5747  # exact values, from tables
    assert t_quantile_95(2.5) < t_quantile_95(2) < t_quantile_95(1.5)


def test_newcombe_interval_reproduces_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 vs 48/80, method 10.
    difference, low, high = proportion_difference(56, 70, 48, 80)
    assert difference == pytest.approx(0.2)
    assert (low, high) == (pytest.approx(0.0524, abs=1e-4), pytest.approx(0.3339, abs=1e-4))


def test_newcombe_interval_stays_open_at_zero_and_one():
    difference, low, high = proportion_difference(5, 5, 0, 5)
    assert difference == 1.0 and 0 < low < 1.0 and high == pytest.approx(1.0)


def test_welch_interval_matches_the_t_test():
    # [1, 2, 3, 4, 5] against [2, 4, 6, 8]: Welch's t-test gives df 4.749 and the interval [-5.8446, 1.8446].
    a, b = Moments(5, 15.0, 55.0), Moments(4, 20.0, 120.0)
    difference, low, high = welch_difference(a, b)
    assert difference == pytest.approx(-2.0)
    assert (low, high) == (pytest.approx(-5.8446, abs=2e-3), pytest.approx(1.8446, abs=2e-3))


def test_welch_interval_is_unbounded_for_a_single_observation_and_exact_for_constants():
    assert welch_difference(Moments(1, 5.0, 25.0), Moments(3, 3.0, 3.0))[1:] == (-math.inf, math.inf)
    assert welch_difference(Moments(3, 6.0, 12.0), Moments(2, 2.0, 2.0)) == (1.0, 1.0, 1.0)


def test_moments_give_the_t_interval_of_the_mean():
    mean, low, high = Moments(4, 10.0, 30.0).mean_interval()  # [1, 2, 3, 4]: variance 5/3
    assert mean == 2.5 and high - mean == pytest.approx(3.1824 * math.sqrt(5 / 3 / 4), abs=2e-3)
    assert Moments(4, 10.0, 30.0).variance == pytest.approx(5 / 3)
    assert Moments(1, 7.0, 49.0).mean_interval() == (7.0, -math.inf, math.inf)  # one value: no spread known


def group(treatment: ArmTotals, control: ArmTotals, key: str = "web") -> GroupTotals:
    return GroupTotals({"channel": key}, customers=3, impressions=1, clicks=0, purchases=0,
                       treatment=treatment, control=control)


def test_report_rows_combine_arms_and_flag_the_smaller_arm():
    (row,) = report_rows([group(ArmTotals(200, 40, 400.0, 4000.0), ArmTotals(50, 5, 50.0, 500.0))], min_sample=100)
    assert (row.units, row.accepts, row.revenue) == (250, 45, 450.0)
    assert row.acceptance_rate[0] == pytest.approx(45 / 250)
    assert row.uplift is not None and row.uplift.acceptance[0] == pytest.approx(0.2 - 0.1)
    assert row.uplift.revenue_per_decision[0] == pytest.approx(2.0 - 1.0)
    assert row.below_min_sample  # control has 50 < 100 units, even though the row has 250


def test_report_rows_without_control_have_no_uplift_and_are_ordered_by_key():
    rows = report_rows(
        [group(ArmTotals(150, 3, 0.0, 0.0), ArmTotals(), "web"), group(ArmTotals(20, 1, 5.0, 25.0), ArmTotals(), "pos")],
        min_sample=100,
    )
    assert [r.key["channel"] for r in rows] == ["pos", "web"]
    assert all(r.uplift is None for r in rows)
    assert [r.below_min_sample for r in rows] == [True, False]


def test_cli_reads_ages_iso_times_and_dimensions():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert point_in_time("7d", now) == now - timedelta(days=7)
    assert point_in_time("90m", now) == now - timedelta(minutes=90)
    assert point_in_time("2026-11-01T00:00:00", now) == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        point_in_time("last week", now)
    assert dimensions("offer, model-version") == ["offer", "model_version"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown dimension colour"):
        dimensions("offer,colour")


def test_wilson_bounds_are_exact_at_zero_and_all():
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
