"""Fault-mode analysis: recovery after a dependency returns, over-budget answers, the per-second timeline."""

from __future__ import annotations

import grpc
import pytest

from cli.bench.faults import Fault, FaultPlan, analyse, recovery
from cli.bench.stats import DEGRADED_BITS, Samples

pytestmark = pytest.mark.unit

SCORING, INVENTORY = DEGRADED_BITS["scoring"], DEGRADED_BITS["inventory"]
BUDGETS = {"web": 0.1, "pos": 0.25, "call_center": 0.25, "outcome": 1.0}


def _traffic(degraded_until: dict[int, float], duration: float = 30.0, rate: int = 10,
             slow_at: float | None = None, error_at: float | None = None) -> Samples:
    """Web decisions at `rate`/s; answers degraded by a bit while their send is before that bit's instant."""
    samples = Samples()
    for k in range(int(duration * rate)):
        t = k / rate
        mask = sum(bit for bit, (start, end) in degraded_until.items() if start <= t < end)
        service = 0.12 if slow_at is not None and abs(t - slow_at) < 1e-9 else 0.01
        code = grpc.StatusCode.DEADLINE_EXCEEDED.value[0] if error_at is not None and abs(t - error_at) < 1e-9 else 0
        samples.add(0, t, service, service, code, 0 if code else mask)
    return samples


def test_recovery_is_the_last_degraded_send_before_the_first_clean_second():
    samples = _traffic({SCORING: (5.0, 12.5)})
    result = recovery(samples, SCORING, returned=10.0, window_end=30.0)
    assert result == {"recovery_s": 2.4, "settled_s": 2.4, "degraded_after_return": 25, "relapses": 0,
                      "recovered": True}


def test_a_stray_degraded_answer_later_is_a_relapse_not_a_slower_recovery():
    samples = _traffic({SCORING: (5.0, 12.5)})
    samples.degraded[200] = SCORING  # the answer sent at t=20.0
    result = recovery(samples, SCORING, returned=10.0, window_end=30.0)
    assert (result["recovery_s"], result["settled_s"], result["relapses"]) == (2.4, 10.0, 1)


def test_gaps_shorter_than_a_second_are_not_clean():
    samples = Samples()
    for t in (10.2, 10.9, 11.7, 12.6):  # degraded every 0.7-0.9 s
        samples.add(0, t, 0.01, 0.01, 0, SCORING)
    assert recovery(samples, SCORING, returned=10.0, window_end=30.0)["recovery_s"] == pytest.approx(2.6)


def test_no_degraded_answer_after_the_return_is_zero_recovery():
    samples = _traffic({SCORING: (5.0, 9.0)})
    assert recovery(samples, SCORING, returned=10.0, window_end=30.0)["recovery_s"] == 0.0


def test_other_services_degradations_do_not_count_against_this_fault():
    samples = _traffic({SCORING: (5.0, 10.0), INVENTORY: (10.0, 20.0)})
    assert recovery(samples, SCORING, returned=10.0, window_end=30.0)["recovery_s"] == 0.0


def test_still_degraded_at_the_end_of_the_window_is_not_recovered():
    samples = _traffic({INVENTORY: (5.0, 30.0)})
    result = recovery(samples, INVENTORY, returned=10.0, window_end=30.0)
    assert (result["recovered"], result["recovery_s"]) == (False, None)
    faults = [Fault("inventory_delayed", "inventory", 5.0, 10.0)]
    report = analyse(samples, faults, started_at=0.0, duration=30.0, budgets=BUDGETS)
    assert report["faults"][0]["pass"] is False


def test_analysis_reports_each_fault_with_checks_and_a_timeline():
    start = 500.0
    faults = [Fault("scoring_stopped", "scoring", start + 5, start + 15), Fault("inventory_delayed", "inventory",
                                                                                 start + 20, start + 25)]
    samples = _traffic({SCORING: (5.0, 16.0), INVENTORY: (20.0, 27.0)}, slow_at=22.0, error_at=23.0)
    report = analyse(samples, faults, started_at=start, duration=30.0, budgets=BUDGETS)
    scoring, inventory = report["faults"]
    assert (scoring["started"], scoring["returned"]) == (5.0, 15.0)
    assert scoring["recovery_s"] == pytest.approx(0.9) and scoring["pass"] is True
    assert inventory["recovery_s"] == pytest.approx(1.9) and inventory["pass"] is True
    assert report["answers_over_budget"] == 2  # one slow answer, one DEADLINE_EXCEEDED
    assert report["checks"] == {"no_answer_over_budget": False, "no_errors": False, "recovery_within_5s": True}
    assert len(report["timeline"]) == 30
    assert report["timeline"][6]["degraded_scoring"] == 10
    assert report["timeline"][22]["over_budget"] == 1


def test_a_slow_recovery_fails_its_check():
    faults = [Fault("scoring_stopped", "scoring", 5.0, 10.0)]
    report = analyse(_traffic({SCORING: (5.0, 17.0)}), faults, started_at=0.0, duration=30.0, budgets=BUDGETS)
    assert report["faults"][0]["recovery_s"] == pytest.approx(6.9)
    assert report["faults"][0]["pass"] is False
    assert report["checks"]["recovery_within_5s"] is False


def test_a_scaled_plan_is_shorter_but_keeps_the_delay():
    plan = FaultPlan().scaled(0.1)
    assert plan.scoring_down == 1.0 and plan.delay_for == 1.0
    assert plan.inventory_delay == FaultPlan().inventory_delay
    assert plan.duration < FaultPlan().duration
