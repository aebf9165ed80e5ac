"""Segment definitions as CEL over traits: validation at compile time, evaluation, membership with since."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.errors import InvalidArgument
from services.profile.domain import AcceptedEvent, ProfileState
from services.profile.domain import events as ev
from services.profile.domain.segments import (
    VARIABLES,
    SegmentDefinition,
    SegmentRegistry,
    compile_segment,
    trait_variables,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def definition(expression: str, name: str = "big") -> SegmentDefinition:
    return SegmentDefinition(name, expression, "", 1, NOW)


def buyer(total: float, tier: int = 0) -> ProfileState:
    state = ProfileState()
    line = ev.OrderLine("SKU-1", 1, total, 0.0, category="shoes")
    state.apply(AcceptedEvent("e-1", "c-1", NOW - timedelta(days=1), "t", ev.Purchase("o", (line,), 0, False, "", "")), NOW)
    if tier:
        state.apply(AcceptedEvent("e-2", "c-1", NOW, "t", ev.LoyaltyChange(0, tier)), NOW)
    return state


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("total_spend >", "Syntax error"),
        ("no_such_trait > 1", "unknown variables no_such_trait"),
        ("total_spend + 1 > 2.0", "does not evaluate"),  # int + double: CEL arithmetic does not coerce
        ("total_spend + 1.0", "must yield a bool"),
        ("", "required"),
    ],
)
def test_bad_expressions_are_rejected_when_put(expression, problem):
    with pytest.raises(InvalidArgument) as error:
        compile_segment(definition(expression))
    assert error.value.field == "segment.expression"
    assert problem in error.value.reason


@pytest.mark.parametrize("name", ["", "Big", "has space", "x" * 65, "-lead"])
def test_bad_names_are_rejected(name):
    with pytest.raises(InvalidArgument) as error:
        compile_segment(definition("true", name=name))
    assert error.value.field == "segment.name"


def test_every_advertised_variable_converts_for_an_empty_profile():
    variables = trait_variables(ProfileState().traits(NOW), VARIABLES)
    assert set(variables) == VARIABLES
    assert variables["loyalty_tier"] == "none" and variables["favourite_categories"] == []


def test_expressions_read_numbers_lists_and_tier_names():
    compiled = compile_segment(
        definition('spend_30d >= 100 && "shoes" in favourite_categories && loyalty_tier == "gold"')
    )
    assert compiled.variables == {"spend_30d", "favourite_categories", "loyalty_tier"}
    assert compiled.matches(trait_variables(buyer(150.0, tier=3).traits(NOW), compiled.variables))
    assert not compiled.matches(trait_variables(buyer(150.0, tier=2).traits(NOW), compiled.variables))
    assert not compiled.matches(trait_variables(buyer(50.0, tier=3).traits(NOW), compiled.variables))


def test_a_runtime_error_means_not_a_member():
    compiled = compile_segment(definition("100 / order_count > 1"))
    assert compiled.matches({"order_count": 0}) is False


def test_registry_records_entering_with_since_and_leaving():
    registry = SegmentRegistry()
    registry.put(compile_segment(definition("total_spend >= 100.0", name="big")))
    registry.put(compile_segment(definition("order_count >= 2", name="repeat")))
    state = buyer(150.0)
    assert registry.evaluate(state, NOW) == ({"big"}, set())
    assert state.segments == {"big": NOW}
    # Still a member later: "since" is kept.
    assert registry.evaluate(state, NOW + timedelta(hours=1)) == (set(), set())
    assert state.segments == {"big": NOW}
    state.apply(AcceptedEvent("e-9", "c-1", NOW, "t", ev.LedgerEntry("refund", 1.0, "")), NOW)
    state.total_spend = 50.0  # e.g. a correction: leaves "big"
    assert registry.evaluate(state, NOW) == (set(), {"big"})
    # A segment deleted from the registry is dropped from the state at the next evaluation.
    state.segments["gone"] = NOW
    assert registry.evaluate(state, NOW) == (set(), {"gone"})
    assert registry.evaluate(state, NOW, only="repeat") == (set(), set())
