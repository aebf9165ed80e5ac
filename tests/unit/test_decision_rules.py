"""CEL offer rules (compiled once at catalogue load, evaluated per decision), type diversity and the no-offer
outcome, and the explanation read back from a stored trace."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.decision.catalogue import CatalogueError, parse_catalogue
from services.decision.domain.arbitration import ArbitrationPolicy, arbitrate
from services.decision.domain.eligibility import screen
from services.decision.domain.explain import explanation
from services.decision.domain.model import Candidate, CartLine, Context, CustomerView, Preferences, Traits
from services.decision.domain.pipeline import conclude
from services.decision.domain.rules import compile_rule, segments

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 6, 12, 0, tzinfo=UTC)  # a Friday
PRODUCTS = [
    {"product_id": "P-SHOE", "name": "Trail Shoe", "category": "shoes", "price": 120.0,
     "variants": [{"sku": "SHOE-40-BLK", "size": "40", "colour": "black"}]},
    {"product_id": "P-SOCK", "name": "Wool Sock", "category": "accessories", "price": 15.0,
     "variants": [{"sku": "SOCK-M-GRY", "size": "M", "colour": "grey"}]},
]


def offer(offer_id: str, **fields) -> dict:
    return {"id": offer_id, "name": offer_id, "type": "loyalty_perk", "channels": ["web", "pos", "call_center"],
            "value": 10.0, "base_propensity": 0.1, "marketing": False, **fields}


def catalogue(*offers: dict):
    return parse_catalogue({"version": "t1", "offers": list(offers)}, {"products": PRODUCTS})


def customer(**traits) -> CustomerView:
    return CustomerView(customer_id="c-1", known=True, traits=Traits(**traits),
                        features={"recency_days": 3.0}, consents=frozenset())


def rule(rule_id: str, when: str, stage: str = "eligibility", why: str = "") -> dict:
    return {"id": rule_id, "stage": stage, "when": when, **({"why": why} if why else {})}


# --- compiling at load --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([rule("gold", "customer.tier_rank >=")], "offers[1].rules[0].when: offer 'b' rule 'gold': does not compile"),
        ([rule("gold", "customer.tierr == 'gold'")], "offers[1].rules[0].when: offer 'b' rule 'gold': unknown field"),
        ([rule("ok", "true"), rule("who", "profile.tier == 'gold'")],
         "offers[1].rules[1].when: offer 'b' rule 'who': unknown variable(s) ['profile']"),
        ([rule("num", "customer.order_count + 1")], "offer 'b' rule 'num': fails on an unknown customer: gave int"),
        ([rule("typ", "customer.tier + 1 == 2")], "offer 'b' rule 'typ': fails on an unknown customer"),
        ([rule("x", "true", stage="timing")], "offers[1].rules[0].stage: unknown stage 'timing'"),
        ([rule("x", "true"), rule("x", "false")], "offers[1].rules[1].id: duplicate rule 'x' in offer 'b'"),
        ([{"id": "x", "when": "true", "iff": "1"}], "offers[1].rules[0]: unknown key(s) ['iff']"),
        ("customer.tier == 'gold'", "offers[1].rules: expected a list"),
    ],
)
def test_a_bad_rule_fails_the_load_naming_offer_and_rule(rules, message):
    with pytest.raises(CatalogueError) as error:
        catalogue(offer("a"), offer("b", rules=rules))
    assert message in str(error.value)


def test_rules_compile_once_and_run_in_stage_order():
    cat = catalogue(offer("a", rules=[rule("fit", "true", "suitability"), rule("page", "true", "applicability"),
                                      rule("tier", "true", "eligibility")]))
    assert [r.stage for r in cat.offers[0].rules] == ["eligibility", "applicability", "suitability"]
    assert cat.offers[0].rules[0].program is not None


# --- evaluating per decision --------------------------------------------------------------------------------------

def test_rules_read_profile_traits_segments_features_and_request_context():
    cat = catalogue(
        offer("gold", rules=[rule("gold_plus", "customer.tier_rank >= 3 && 'loyal' in customer.segments")]),
        offer("shoes", rules=[rule("on_shoes", "request.category == 'shoes' && request.dwell_seconds > 20.0",
                                   "applicability")]),
        offer("basket", rules=[rule("big_cart", "request.cart_value >= 100.0 && 'accessories' in "
                                    "request.cart_categories", "applicability")]),
        offer("recent", rules=[rule("recent", "has(customer.features.recency_days) && "
                                    "customer.features.recency_days < 7.0", "suitability")]),
        offer("friday", rules=[rule("weekend", "request.weekday >= 5 && request.hour >= 9", "applicability")]),
        offer("size", rules=[rule("fits", "'40' in customer.preferred_sizes", "suitability")]),
    )
    ctx = Context(page="product", sku="SHOE-40-BLK", dwell_seconds=25,
                  cart=(CartLine("SOCK-M-GRY", 10, 12.0),))
    who = customer(loyalty_tier="gold", preferences=Preferences(sizes=("40",)))
    result = screen(cat, "web", ctx, who, NOW)
    assert [o.id for o in result.eligible] == ["gold", "shoes", "basket", "recent", "friday", "size"]

    silver = customer(loyalty_tier="silver")
    result = screen(cat, "web", Context(page="home"), silver, NOW.replace(day=2))  # a Monday
    assert result.removed == {"gold": "rule:gold_plus", "shoes": "rule:on_shoes", "basket": "rule:big_cart",
                              "friday": "rule:weekend", "size": "rule:fits"}
    assert [o.id for o in result.eligible] == ["recent"]
    assert result.details["shoes"] == {"stage": "applicability",
                                       "why": "request.category == 'shoes' && request.dwell_seconds > 20.0",
                                       "expression": "request.category == 'shoes' && request.dwell_seconds > 20.0"}


def test_the_feature_map_joins_the_facts_only_when_a_rule_of_the_catalogue_may_read_it():
    from services.decision.domain.eligibility import rule_facts

    plain = catalogue(offer("gold", rules=[rule("gold", "customer.tier_rank >= 3")]), offer("none"))
    reading = catalogue(offer("gold", rules=[rule("gold", "customer.tier_rank >= 3")]),
                        offer("recent", rules=[rule("recent", "has(customer.features.recency_days)")]))
    assert not plain.rules_read_features and reading.rules_read_features
    probe = compile_rule("probe", "eligibility", "has(customer.features)")
    assert not probe.holds(rule_facts("web", Context(), customer(), plain, NOW))
    assert probe.holds(rule_facts("web", Context(), customer(), reading, NOW))
    # Either way the rules decide alike.
    gold = customer(loyalty_tier="gold")
    assert [o.id for o in screen(plain, "web", Context(), gold, NOW).eligible] == ["gold", "none"]
    assert [o.id for o in screen(reading, "web", Context(), gold, NOW).eligible] == ["gold", "recent"]


def test_the_first_failing_rule_is_recorded_with_the_operators_why():
    cat = catalogue(offer("x", rules=[
        rule("member", "'member' in customer.segments", why="members only"),
        rule("no_issue", "customer.open_service_issues == 0", "suitability", "no upsell during a complaint"),
    ]))
    both = screen(cat, "web", Context(), customer(open_service_issues=1), NOW)
    assert both.removed == {"x": "rule:member"} and both.details["x"]["why"] == "members only"
    second = screen(cat, "web", Context(), customer(loyalty_tier="bronze", open_service_issues=1), NOW)
    assert second.removed == {"x": "rule:no_issue"}
    assert second.details["x"] == {"stage": "suitability", "why": "no upsell during a complaint",
                                   "expression": "customer.open_service_issues == 0"}
    assert [o.id for o in screen(cat, "web", Context(), customer(loyalty_tier="bronze"), NOW).eligible] == ["x"]


def test_a_rule_that_faults_at_run_time_removes_the_offer_and_says_why():
    # Loads (the reference customer has no features, and `has` guards nothing here, but the map lookup is only
    # reached when the customer is known), then faults on a customer whose features lack the key.
    cat = catalogue(offer("x", rules=[rule("churn", "!customer.known || customer.features.churn < 0.5")]))
    result = screen(cat, "web", Context(), customer(), NOW)
    assert result.removed == {"x": "rule:churn"}
    assert result.details["x"]["why"].startswith("rule error:")


def test_structured_rules_still_apply_before_cel_rules():
    cat = catalogue(offer("x", eligibility={"min_tier": "gold"}, rules=[rule("never", "false")]))
    assert screen(cat, "web", Context(), customer(), NOW).removed == {"x": "min_tier"}


def test_segment_facts_follow_the_traits():
    assert segments(Traits()) == ["new_customer"]
    facts = segments(Traits(loyalty_tier="platinum", net_value=2000, order_count=6, full_price_share=0.9,
                            shipping_paid_share=0.6, return_rate=0.5, open_service_issues=1))
    assert facts == ["member", "loyal", "high_value", "frequent_buyer", "full_price_buyer", "pays_for_shipping",
                     "frequent_returner", "open_issue"]


def test_compile_rule_defaults_why_to_the_expression():
    compiled = compile_rule("r", "eligibility", "customer.order_count >= 1")
    assert compiled.why == "customer.order_count >= 1"


# --- diversity and the no-offer outcome -------------------------------------------------------------------------

def test_one_offer_per_type_unless_the_offer_allows_sharing():
    cat = catalogue(
        offer("d1", type="discount", value=30.0),
        offer("d2", type="discount", value=20.0),
        offer("d3", type="discount", value=15.0, allow_same_type=True),
        offer("perk", value=10.0),
        offer("perk2", value=5.0),
        offer("sock1", type="cross_sell", product_id="P-SOCK", value=4.0, allow_same_type=True),
        offer("sock2", type="discount", product_id="P-SOCK", value=3.0, allow_same_type=True),
    )
    candidates = [Candidate(o, 0.5, "model_propensity") for o in cat.offers]
    result = arbitrate(candidates, Context(), customer(), frozenset(), cat, ArbitrationPolicy(), max_offers=10)
    assert [s.candidate.offer.id for s in result.ranked] == ["d1", "d3", "perk", "sock1"]
    assert result.dropped == {"d2": "diversity_type", "perk2": "diversity_type", "sock2": "diversity"}


def test_allow_same_type_must_be_a_boolean():
    with pytest.raises(CatalogueError, match=r"offers\[0\].allow_same_type: expected true or false"):
        catalogue(offer("x", allow_same_type="yes"))


def _conclude(cat, who, min_priority):
    return conclude(catalogue=cat, channel="web", ctx=Context(), customer=who,
                    screening=screen(cat, "web", Context(), who, NOW), scores=None, stock=None,
                    warehouse_id="DC1", policy=ArbitrationPolicy(min_priority=min_priority), max_offers=3)


def test_no_offer_says_whether_nothing_was_eligible_or_nothing_cleared_the_minimum():
    cat = catalogue(offer("x", rules=[rule("gold", "customer.tier == 'gold'", why="gold only")]))
    nothing = _conclude(cat, customer(), 0.0)
    assert nothing.offers == () and nothing.no_offer_reason == "nothing_eligible"
    assert nothing.trace["considered"] == [
        {"offer_id": "x", "removed": "rule:gold", "stage": "eligibility", "why": "gold only",
         "expression": "customer.tier == 'gold'"}
    ]
    low = _conclude(cat, customer(loyalty_tier="gold"), 5.0)  # 0.1 x 10 = 1 < 5
    assert low.offers == () and low.no_offer_reason == "below_min_priority"
    assert low.trace["no_offer_reason"] == "below_min_priority" and low.trace["min_priority"] == 5.0
    fine = _conclude(cat, customer(loyalty_tier="gold"), 0.5)
    assert [o.offer_id for o in fine.offers] == ["x"] and fine.no_offer_reason == ""
    assert "no_offer_reason" not in fine.trace


def test_explanation_reads_every_fate_from_the_trace():
    cat = catalogue(offer("a", value=30.0), offer("b", value=20.0),
                    offer("c", rules=[rule("never", "false", "suitability", "not now")]))
    result = _conclude(cat, customer(), 0.0)
    row = {"decision_id": "d1", "customer_id": "c-1", "channel": "web", "created_at": NOW,
           "catalogue_version": "t1+abc", "model_version": "", "degraded_reasons": ["scoring_unavailable"],
           "trace": result.trace}
    found = explanation(row)
    fates = {c.offer_id: c for c in found.considered}
    assert (fates["a"].fate, fates["a"].rank, fates["a"].score) == ("ranked", 1, pytest.approx(3.0))
    assert (fates["a"].propensity_source, fates["a"].value, fates["a"].context_weight) == ("rule_propensity", 30, 1)
    assert (fates["b"].fate, fates["b"].removed_by) == ("dropped", "diversity_type")
    assert (fates["c"].fate, fates["c"].removed_by, fates["c"].stage, fates["c"].why) == (
        "removed", "rule:never", "suitability", "not now")
    assert found.catalogue_version == "t1+abc" and found.degraded_reasons == ("scoring_unavailable",)
    assert found.arm == "treatment"
    assert replace(found, considered=()).no_offer_reason == ""


# --- contact policies and budgets in the catalogue ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"contact_policy": {"max_per_day": 0}}, "offers[0].contact_policy.max_per_day: must be at least 1"),
        ({"contact_policy": {"max_per_day": 1.5}}, "offers[0].contact_policy.max_per_day: expected an integer"),
        ({"contact_policy": {"per_month": 3}}, "offers[0].contact_policy: unknown key(s) ['per_month']"),
        ({"budget": {}}, "offers[0].budget: set max_accepts and/or max_spend"),
        ({"budget": {"max_spend": "lots"}}, "offers[0].budget.max_spend: expected a number"),
    ],
)
def test_bad_contact_policy_or_budget_fails_the_load(fields, message):
    with pytest.raises(CatalogueError) as error:
        catalogue(offer("x", **fields))
    assert message in str(error.value)


def test_contact_counts_block_offers_by_channel_count_decline_and_ignores():
    from datetime import timedelta

    from services.decision.domain.contact import Contacts, blocked, lookback

    cat = catalogue(
        offer("daily", contact_policy={"max_per_day": 2}),
        offer("weekly", contact_policy={"max_per_week": 2}),
        offer("cool", contact_policy={"decline_cooldown_days": 3}),
        offer("ignored", contact_policy={"max_ignores": 2}),
        offer("free"),
    )
    assert lookback(cat) == timedelta(days=7)
    day = timedelta(days=1)
    history = {
        "daily": Contacts(today=2, week=2), "weekly": Contacts(today=0, week=2),
        "cool": Contacts(declined_at=NOW - 2 * day), "ignored": Contacts(today=1, week=1, ignored=2),
        "free": Contacts(today=9, week=9, ignored=9, declined_at=NOW),
    }
    result = blocked(cat.offers, "web", history, NOW)
    assert {k: v[0] for k, v in result.items()} == {
        "daily": "contact_daily_cap", "weekly": "contact_weekly_cap", "cool": "decline_cooldown",
        "ignored": "ignored_too_often",
    }
    assert result["daily"][1] == "shown 2 times on web in 24 h (cap 2)"
    # Under every cap; a decline 4 days ago is past its 3-day cool-down; offers never shown are absent.
    later = {
        "daily": Contacts(today=1, week=5), "weekly": Contacts(week=1), "cool": Contacts(declined_at=NOW - 4 * day),
        "ignored": Contacts(ignored=1),
    }
    assert blocked(cat.offers, "pos", later, NOW) == {}
    assert blocked(cat.offers, "web", {}, NOW) == {}


# --- control group ------------------------------------------------------------------------------------------------

def test_control_assignment_is_deterministic_and_close_to_the_share():
    from services.decision.domain.experiment import arm_of

    arms = [arm_of(f"c-{i}", 0.2, "salt") for i in range(5000)]
    assert arms == [arm_of(f"c-{i}", 0.2, "salt") for i in range(5000)]  # same customer, same arm
    assert 0.18 < arms.count("control") / len(arms) < 0.22
    assert arm_of("", 0.5, "salt") == "treatment"  # anonymous visitors are never in control
    assert arm_of("c-1", 0.0, "salt") == "treatment"
    moved = sum(arm_of(f"c-{i}", 0.2, "other") != arms[i] for i in range(5000))
    assert moved > 500  # a new salt re-draws the groups


def test_control_arm_draws_one_eligible_offer_uniformly_and_logs_its_probability():
    import random

    cat = catalogue(offer("a", value=30.0), offer("b", type="discount", value=1.0), offer("c", type="cross_sell",
                    value=1.0), offer("gone", rules=[rule("never", "false")]))
    who = customer()
    picks = []
    for seed in range(60):
        result = conclude(catalogue=cat, channel="web", ctx=Context(), customer=who,
                          screening=screen(cat, "web", Context(), who, NOW), scores=None, stock=None,
                          warehouse_id="DC1", policy=ArbitrationPolicy(min_priority=50.0), max_offers=3,
                          arm="control", rng=random.Random(seed))
        assert len(result.offers) == 1 and result.trace["arm"] == "control"
        assert result.trace["control_probability"] == pytest.approx(1 / 3)
        assert result.trace["control_pick"] == result.offers[0].offer_id
        assert result.offers[0].probability == pytest.approx(1 / 3)
        removed = {e["offer_id"]: e.get("removed") for e in result.trace["considered"]}
        assert removed["gone"] == "rule:never"
        assert sorted(k for k, v in removed.items() if v == "control_not_drawn") == sorted(
            {"a", "b", "c"} - {result.offers[0].offer_id})
        picks.append(result.offers[0].offer_id)
    assert set(picks) == {"a", "b", "c"}  # not the arbitration winner every time, and never filtered by priority
    none = conclude(catalogue=cat, channel="web", ctx=Context(), customer=who,
                    screening=screen(cat, "web", Context(), who, NOW), scores=None, stock=None,
                    warehouse_id="DC1", policy=ArbitrationPolicy(), max_offers=3, arm="control", control_offer="none")
    assert none.offers == () and none.no_offer_reason == "control_group" and none.trace["arm"] == "control"


# --- epsilon-greedy exploration -----------------------------------------------------------------------------------

def test_exploration_logs_exact_probabilities_that_match_what_is_shown():
    import random

    cat = catalogue(offer("a", value=40.0), offer("b", type="discount", value=30.0),
                    offer("c", type="cross_sell", value=20.0), offer("d", type="free_shipping", value=10.0))
    candidates = [Candidate(o, 0.5, "model_propensity") for o in cat.offers]
    policy = ArbitrationPolicy(epsilon=0.3, explore_top=3)
    rng = random.Random(7)
    shown_counts: dict[str, int] = {}
    runs = 4000
    for _ in range(runs):
        result = arbitrate(candidates, Context(), customer(), frozenset(), cat, policy, max_offers=2, rng=rng)
        assert sum(result.first_probability.values()) == pytest.approx(1.0)
        assert result.first_probability == pytest.approx({"a": 0.7 + 0.1, "b": 0.1, "c": 0.1})
        for s in result.ranked:
            shown_counts[s.candidate.offer.id] = shown_counts.get(s.candidate.offer.id, 0) + 1
        probabilities = result.shown_probability
    # Slates: a first -> (a, b); b first -> (b, a); c first -> (c, a). So a is always shown, b 0.9, c 0.1.
    assert probabilities.keys() <= {"a", "b", "c"}
    exact = {"a": 1.0, "b": 0.9, "c": 0.1}
    for offer_id, count in shown_counts.items():
        assert count / runs == pytest.approx(exact[offer_id], abs=0.03)
    greedy = arbitrate(candidates, Context(), customer(), frozenset(), cat, ArbitrationPolicy(), max_offers=2)
    assert greedy.shown_probability == {"a": 1.0, "b": 1.0} and greedy.first_probability == {}


def test_exploration_probability_reaches_the_decided_offers_and_the_trace():
    import random

    cat = catalogue(offer("a", value=40.0), offer("b", type="discount", value=30.0))
    who = customer()
    result = conclude(catalogue=cat, channel="web", ctx=Context(), customer=who,
                      screening=screen(cat, "web", Context(), who, NOW), scores=None, stock=None,
                      warehouse_id="DC1", policy=ArbitrationPolicy(epsilon=0.5), max_offers=1,
                      rng=random.Random(1))
    first = result.offers[0]
    expected = {"a": 0.75, "b": 0.25}[first.offer_id]
    assert first.probability == pytest.approx(expected)
    entry = next(e for e in result.trace["considered"] if e.get("rank") == 1)
    assert entry["probability"] == pytest.approx(expected)
    assert result.trace["exploration"]["first_probability"] == pytest.approx({"a": 0.75, "b": 0.25})


@pytest.mark.parametrize(
    ("placements", "problem"),
    [("cart", r"offers\[0\].placements: expected a list"), (["Cart"], r"offers\[0\].placements\[0\]: a placement")],
)
def test_placements_are_checked_on_load(placements, problem):
    with pytest.raises(CatalogueError, match=problem):
        catalogue(offer("x", placements=placements))


def test_a_rule_can_read_the_request_placement():
    cat = catalogue(
        offer("x", rules=[{"id": "checkout", "stage": "applicability", "when": 'request.placement == "checkout"'}])
    )
    at_checkout = screen(cat, "web", Context(placement="checkout"), customer(), NOW)
    in_cart = screen(cat, "web", Context(placement="cart"), customer(), NOW)
    assert [o.id for o in at_checkout.eligible] == ["x"]
    assert in_cart.removed == {"x": "rule:checkout"}
