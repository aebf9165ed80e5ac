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
    segment_variables,
    trait_variables,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def definition(expression: str, name: str = "big") -> SegmentDefinition:
    return SegmentDefinition(name, expression, "", 1, NOW)


def buyer(total: float, tier: int = 0) -> ProfileState:
    state = ProfileState()
    line = ev.OrderLine("SKU-1", 1, total, 0.0, category="shoes")
    state.apply(
        AcceptedEvent("e-1", "c-1", NOW - timedelta(days=1), "t", ev.Purchase("o", (line,), 0, False, "", "")), NOW
    )
    if tier:
        state.apply(AcceptedEvent("e-2", "c-1", NOW, "t", ev.LoyaltyChange(0, tier)), NOW)
    return state


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("total_spend >", "Syntax error"),
        ("no_such_trait > 1", "unknown variables no_such_trait"),
        ("size(recently_returned) > 0", "unknown variables recently_returned"),  # structured: no CEL form
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
    variables = trait_variables(ProfileState().traits(NOW), VARIABLES - {"model"})
    assert set(variables) == VARIABLES - {"model"}
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
    # A segment this registry does not know (put through a replica that has not been reloaded here yet) is kept.
    state.segments["other"] = NOW
    assert registry.evaluate(state, NOW) == (set(), set())
    assert state.segments == {"other": NOW}
    assert registry.evaluate(state, NOW, only="repeat") == (set(), set())


def event(kind_payload, when: datetime = NOW, event_id: str = "e") -> AcceptedEvent:
    return AcceptedEvent(event_id, "c-1", when, "t", kind_payload)


def predict(use_case: str, value: float, version: str = "v1") -> ev.ModelPrediction:
    return ev.ModelPrediction(use_case, "gbm", version, value)


def test_model_traits_are_read_as_model_use_case_field():
    compiled = compile_segment(definition("has(model.churn_risk) && model.churn_risk.value > 0.6"))
    assert compiled.variables == {"model.churn_risk"} and not compiled.time_dependent
    state = buyer(10.0)
    assert not compiled.matches(segment_variables(state, NOW, compiled.variables))  # never scored
    state.apply(event(predict("churn_risk", 0.7)), NOW)
    assert compiled.matches(segment_variables(state, NOW, compiled.variables))
    state.apply(event(predict("churn_risk", 0.2, "v2"), NOW + timedelta(hours=1)), NOW)
    assert not compiled.matches(segment_variables(state, NOW, compiled.variables))
    # Without has(): a customer not scored for the use case is simply not a member.
    ltv = compile_segment(
        definition('model.lifetime_value.value > 500.0 && model.lifetime_value.model_version == "v1"')
    )
    assert ltv.variables == {"model.lifetime_value"}
    assert not ltv.matches(segment_variables(state, NOW, ltv.variables))
    state.apply(event(predict("lifetime_value", 900.0)), NOW)
    assert ltv.matches(segment_variables(state, NOW, ltv.variables))


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ('model["churn_risk"].value > 0.5', "read model traits as model.<use case>.<field>"),
        ("size(model) > 0", "read model traits as model.<use case>.<field>"),
        ("model.churn_risk.scored_at > 1", "unknown model trait field 'scored_at'"),
        ("model.churn_risk.value + 1 > 2.0", "does not evaluate"),  # a double plus an int, checked at put
        ("model.churn_risk.model_version > 1.0", "does not evaluate"),
        ("modelx > 1", "unknown variables modelx"),
    ],
)
def test_model_references_are_checked_when_put(expression, problem):
    with pytest.raises(InvalidArgument) as error:
        compile_segment(definition(expression))
    assert problem in error.value.reason


def test_model_in_a_string_or_as_a_field_is_not_a_model_reference():
    compiled = compile_segment(definition('"model[x]" in recent_searches && return_method_mix.model > 0.0'))
    assert compiled.variables == {"recent_searches", "return_method_mix"}


def rich_state() -> ProfileState:
    """A customer with some of every event kind, the newest an hour before NOW."""
    state = buyer(150.0, tier=3)
    payloads = [
        ev.ProductReturn("o", (ev.ReturnLine("SKU-1", 1, 40.0),), "mail", "size"),
        ev.CartChange("add", "SKU-2", 1, 20.0),
        ev.ProductView("SKU-2", 90.0),
        ev.ProductView("SKU-2", 30.0),
        ev.Search("boots", 3),
        ev.ServiceContact("late", False),
        ev.StoreVisit("s-1", 60.0),
        ev.LedgerEntry("refund", 5.0, ""),
        predict("churn_risk", 0.4),
    ]
    for i, payload in enumerate(payloads):
        state.apply(event(payload, NOW - timedelta(hours=1), f"r-{i}"), NOW)
    return state


def test_the_traits_that_move_with_the_clock_are_all_classified_time_dependent():
    state = rich_state()
    names = VARIABLES - {"model"}
    values = segment_variables(state, NOW, names)
    moved: set[str] = set()
    for later in (timedelta(days=2), timedelta(days=40), timedelta(days=100), timedelta(days=400)):
        at_later = segment_variables(state, NOW + later, names)
        moved |= {name for name in names if at_later[name] != values[name]}
    assert moved >= {"days_since_last_purchase", "spend_30d", "purchase_intent", "recent_returns"}
    for name in moved:
        assert compile_segment(definition(f"{name} == {name}")).time_dependent, name
    assert not compile_segment(definition("total_spend > 1.0 && has(model.churn_risk)")).time_dependent


def test_only_segments_reading_a_changed_trait_are_re_evaluated():
    registry = SegmentRegistry()
    for name, expression in [
        ("big", "total_spend >= 100.0"),
        ("gold", 'loyalty_tier == "gold"'),
        ("churny", "has(model.churn_risk) && model.churn_risk.value > 0.6"),
        ("lapsed", "days_since_last_purchase > 30"),
    ]:
        registry.put(compile_segment(definition(expression, name=name)))
    state = buyer(150.0)
    registry.evaluate(state, NOW)
    assert state.segments == {"big": NOW}
    registry.evaluations.clear()
    # A stale membership proves a skipped segment was not evaluated: "big" would be left if it were.
    state.segments["big"] = NOW - timedelta(days=9)
    state.total_spend = 0.0

    before = registry.snapshot(state, NOW)
    state.apply(event(ev.LoyaltyChange(10, 3), event_id="l-1"), NOW)
    assert registry.evaluate(state, NOW, before=before) == ({"gold"}, set())
    assert registry.evaluations == {"gold": 1, "lapsed": 1}  # the one reading the tier, and the clock-bound one
    assert "big" in state.segments

    before = registry.snapshot(state, NOW)
    state.apply(event(predict("lifetime_value", 900.0), event_id="m-1"), NOW)  # a use case no segment reads
    assert registry.evaluate(state, NOW, before=before) == (set(), set())
    assert registry.evaluations == {"gold": 1, "lapsed": 2}

    before = registry.snapshot(state, NOW)
    state.apply(event(predict("churn_risk", 0.9), event_id="m-2"), NOW)
    assert registry.evaluate(state, NOW, before=before) == ({"churny"}, set())
    assert registry.evaluations == {"gold": 1, "lapsed": 3, "churny": 1}

    before = registry.snapshot(state, NOW)
    state.apply(event(ev.LedgerEntry("refund", 1.0, ""), event_id="x-1"), NOW)  # changes net_value only
    registry.evaluate(state, NOW, before=before)
    assert registry.evaluations["big"] == 0 and "big" in state.segments

    # A batch changing what "big" reads re-evaluates it (and so corrects the stale membership).
    before = registry.snapshot(state, NOW)
    state.apply(event(ev.Purchase("o", (ev.OrderLine("SKU-3", 1, 5.0, 0.0),), 0, False, "", ""), event_id="p-2"), NOW)
    assert registry.evaluate(state, NOW, before=before) == (set(), {"big"})
    assert registry.evaluations["big"] == 1


def test_time_only_evaluates_the_clock_bound_segments():
    registry = SegmentRegistry()
    registry.put(compile_segment(definition("total_spend >= 100.0", name="big")))
    assert not registry.time_dependent
    registry.put(compile_segment(definition("days_since_last_purchase > 30", name="lapsed")))
    assert registry.time_dependent
    state = buyer(150.0)
    assert registry.evaluate(state, NOW + timedelta(days=31), time_only=True) == ({"lapsed"}, set())
    assert registry.evaluations == {"lapsed": 1}
    assert state.segments == {"lapsed": NOW + timedelta(days=31)}
