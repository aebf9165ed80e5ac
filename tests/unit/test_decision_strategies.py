"""A/B test of arbitration strategies: deterministic hash assignment, independent of control, and strategy B's policy."""

from __future__ import annotations

import pytest

from services.decision.app import strategy_b_policy
from services.decision.domain.arbitration import THOMPSON, ArbitrationPolicy, Weights
from services.decision.domain.experiment import CONTROL, TREATMENT, TREATMENT_B, strategy_arm
from services.decision.orchestrator import DecisionPolicy
from services.decision.settings import StrategyOverrides

pytestmark = pytest.mark.unit

CUSTOMERS = [f"c-{i}" for i in range(4000)]


def test_strategy_assignment_is_deterministic_and_splits_by_the_share():
    arms = [strategy_arm(c, 0.25, "s-1") for c in CUSTOMERS]
    assert arms == [strategy_arm(c, 0.25, "s-1") for c in CUSTOMERS]  # same customer, same arm, every time
    assert arms.count(TREATMENT_B) / len(arms) == pytest.approx(0.25, abs=0.03)
    redrawn = [strategy_arm(c, 0.25, "s-2") for c in CUSTOMERS]
    assert redrawn != arms  # a new salt re-draws the arms
    assert strategy_arm("", 0.9, "s-1") == TREATMENT and strategy_arm("c-1", 0.0, "s-1") == TREATMENT


def test_control_comes_first_and_strategy_b_splits_the_treatment_independently():
    strategy_b = ArbitrationPolicy(exploration=THOMPSON)
    policy = DecisionPolicy(ArbitrationPolicy(), "DC1", {}, 0.01, control_share=0.2, control_salt="k",
                            strategy_b=strategy_b, strategy_b_share=0.5, strategy_salt="s")
    assigned = {c: policy.strategy(c) for c in CUSTOMERS}
    arms = [arm for arm, _ in assigned.values()]
    assert arms.count(CONTROL) / len(arms) == pytest.approx(0.2, abs=0.03)
    assert arms.count(TREATMENT_B) / len(arms) == pytest.approx(0.4, abs=0.03)  # half of the 80% treated
    assert all((p is strategy_b) == (arm == TREATMENT_B) for arm, p in assigned.values())


def test_strategy_b_is_strategy_a_with_the_overrides():
    a = ArbitrationPolicy(long_dwell_seconds=20, epsilon=0.1, explore_top=4)
    b = strategy_b_policy(a, StrategyOverrides(exploration_policy="thompson", weights={"long_dwell": 2.0}))
    assert b == ArbitrationPolicy(long_dwell_seconds=20, epsilon=0.1, explore_top=4, exploration=THOMPSON,
                                  weights=Weights(long_dwell=2.0))
    assert strategy_b_policy(a, StrategyOverrides()) == a
