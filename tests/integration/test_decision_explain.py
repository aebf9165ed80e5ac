"""CEL rules, the no-offer answer and Explain end to end: the real decision service on SQLite and PostgreSQL."""

from __future__ import annotations

import copy

import grpc
import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb

from cli.explain import format_explanation
from libs.settings import CommonSettings
from services.decision.app import build
from services.decision.settings import DecisionSettings
from tests.integration.decision_fakes import EMAIL, OFFERS, WEB, start_mesh, write_catalogue

pytestmark = pytest.mark.integration


def web_request(email: str = "ann@example.com", page: str = "product") -> pb.DecideRequest:
    return pb.DecideRequest(
        channel=WEB, customer=common_pb2.CustomerRef(identifiers=[common_pb2.Identifier(type=EMAIL, value=email)]),
        context=pb.DecisionContext(page=page), max_offers=10,
    )


def with_rules() -> list[dict]:
    offers = copy.deepcopy(OFFERS)
    by_id = {o["id"]: o for o in offers}
    by_id["gold-perk"].pop("eligibility")  # migrated to CEL
    by_id["gold-perk"]["rules"] = [{"id": "loyal_only", "when": "'loyal' in customer.segments",
                                    "why": "the perk rewards Gold and Platinum members"}]
    by_id["cap-cross-sell"]["rules"] = [{"id": "cart_page", "stage": "applicability", "when": "request.page == 'cart'",
                                         "why": "cross-sell on the cart page only"}]
    return offers


async def test_cel_rules_filter_offers_and_explain_returns_the_whole_trace(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url,
                            catalogue_dir=write_catalogue(tmp_path / "catalogue", with_rules()))
    mesh.scoring.probabilities = {"sneaker-discount": 0.3, "tee-discount": 0.5, "free-shipping": 0.5,
                                  "gold-perk": 0.2, "cap-cross-sell": 0.9}
    ann = await mesh.stub.Decide(web_request(), timeout=5)  # gold: the perk stays; product page: no cross-sell
    assert [o.offer_id for o in ann.offers] == ["sneaker-discount", "tee-discount", "free-shipping", "gold-perk"]
    assert not ann.no_offer and ann.no_offer_reason == "" and ann.arm == "treatment"

    explained = await mesh.stub.Explain(pb.ExplainRequest(decision_id=ann.decision_id), timeout=5)
    assert explained.decision_id == ann.decision_id and explained.customer_id == "c-ann"
    assert explained.channel == WEB and explained.decided_at == ann.decided_at
    assert (explained.catalogue_version, explained.model_version) == (ann.catalogue_version, "m-test-3")
    fates = {c.offer_id: c for c in explained.considered}
    assert fates["cap-cross-sell"].fate == pb.OFFER_FATE_REMOVED
    assert (fates["cap-cross-sell"].removed_by, fates["cap-cross-sell"].stage, fates["cap-cross-sell"].why) == (
        "rule:cart_page", "applicability", "cross-sell on the cart page only")
    assert fates["callback"].removed_by == "channel"
    assert fates["sneaker-preorder"].removed_by == "in_stock_no_pre_order"
    assert all(o.probability == 1.0 for o in ann.offers)  # no exploration configured: deterministic
    free = fates["free-shipping"]
    assert (free.fate, free.rank, free.propensity_source, list(free.factors)) == (
        pb.OFFER_FATE_RANKED, 3, "model_propensity", ["pays_for_shipping"])
    assert free.score == pytest.approx(0.5 * 4 * 1 * 1.3) and free.context_weight == pytest.approx(1.3)

    text = format_explanation(explained)
    assert f"catalogue {ann.catalogue_version}, model m-test-3" in text
    assert "  3. free-shipping  score 2.6000 = propensity 0.5000 [model_propensity] x value 4 x lever 1 x " \
           "context 1.3 (pays_for_shipping)" in text
    assert "  - cap-cross-sell: rule:cart_page [applicability] cross-sell on the cart page only" in text

    # Bob is new: the CEL eligibility rule removes the perk, and says why.
    bob = await mesh.stub.Decide(web_request("bob@example.com", page="cart"), timeout=5)
    assert "gold-perk" not in [o.offer_id for o in bob.offers] and "cap-cross-sell" in [o.offer_id for o in bob.offers]
    bob_trace = await mesh.stub.Explain(pb.ExplainRequest(decision_id=bob.decision_id), timeout=5)
    perk = next(c for c in bob_trace.considered if c.offer_id == "gold-perk")
    assert (perk.removed_by, perk.stage, perk.why) == (
        "rule:loyal_only", "eligibility", "the perk rewards Gold and Platinum members")


async def test_no_offer_is_visible_in_the_answer_and_explained(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url, min_priority=100.0)
    reply = await mesh.stub.Decide(web_request(), timeout=5)
    assert list(reply.offers) == [] and reply.no_offer and reply.no_offer_reason == "below_min_priority"
    explained = await mesh.stub.Explain(pb.ExplainRequest(decision_id=reply.decision_id), timeout=5)
    assert explained.no_offer_reason == "below_min_priority" and explained.min_priority == 100.0
    dropped = [c for c in explained.considered if c.fate == pb.OFFER_FATE_DROPPED]
    assert dropped and {c.removed_by for c in dropped} == {"below_min_priority"}
    assert "NO OFFER: below_min_priority" in format_explanation(explained)


async def test_explain_rejects_unknown_and_malformed_ids(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await mesh.stub.Explain(pb.ExplainRequest(decision_id="f" * 32), timeout=5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await mesh.stub.Explain(pb.ExplainRequest(), timeout=5)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "decision_id" in empty.value.details()


async def test_a_bad_rule_stops_start_up_naming_the_offer_and_rule(tmp_path, sqlite_url):
    offers = copy.deepcopy(OFFERS)
    offers[2]["rules"] = [{"id": "typo", "when": "customer.tierr == 'gold'"}]
    app = build(DecisionSettings(database_url=sqlite_url, port=0, common=CommonSettings(data_dir=tmp_path),
                                 catalogue_dir=write_catalogue(tmp_path / "catalogue", offers)))
    with pytest.raises(SystemExit) as stopped:
        await app.on_start()
    assert "offers[2].rules[0].when: offer 'sneaker-preorder' rule 'typo': unknown field" in str(stopped.value)
    await app.on_stop()


async def test_control_group_arm_is_in_the_answer_the_log_and_the_explanation(database_url, serve, tmp_path):
    # With this salt c-ann hashes to 0.046 (control at a 10% share) and c-bob to 0.86 (treatment).
    mesh = await start_mesh(serve, tmp_path, database_url, control_share=0.1, control_salt="control-1",
                            control_offer="none")
    ann = await mesh.stub.Decide(web_request(), timeout=5)
    assert (ann.arm, ann.no_offer, ann.no_offer_reason, list(ann.offers)) == ("control", True, "control_group", [])
    explained = await mesh.stub.Explain(pb.ExplainRequest(decision_id=ann.decision_id), timeout=5)
    assert explained.arm == "control" and explained.no_offer_reason == "control_group"
    assert {c.removed_by for c in explained.considered if c.fate == pb.OFFER_FATE_REMOVED} >= {"control_not_drawn"}
    bob = await mesh.stub.Decide(web_request("bob@example.com"), timeout=5)
    assert bob.arm == "treatment" and bob.offers
    row = await mesh.repository.decision(ann.decision_id)
    assert row["trace"]["arm"] == "control"


async def test_explored_decisions_log_each_shown_offers_probability(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url, exploration_epsilon=0.4, exploration_top=4)
    reply = await mesh.stub.Decide(web_request(), timeout=5)
    assert reply.offers and all(0.0 < o.probability <= 1.0 for o in reply.offers)
    row = await mesh.repository.decision(reply.decision_id)
    first = row["trace"]["exploration"]["first_probability"]
    assert sum(first.values()) == pytest.approx(1.0) and len(first) == 4
    assert [o["probability"] for o in row["offers"]] == pytest.approx([o.probability for o in reply.offers])
    explained = await mesh.stub.Explain(pb.ExplainRequest(decision_id=reply.decision_id), timeout=5)
    ranked = sorted((c for c in explained.considered if c.fate == pb.OFFER_FATE_RANKED), key=lambda c: c.rank)
    assert [c.probability for c in ranked] == pytest.approx([o.probability for o in reply.offers])
