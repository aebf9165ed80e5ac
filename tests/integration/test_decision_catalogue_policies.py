"""Scarcity, catalogue hot reload, call-centre "avoid" lines, Thompson sampling and A/B strategy arms end to end."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb

from services.decision.domain.experiment import strategy_arm
from tests.integration.decision_fakes import OFFERS, WEB, start_mesh, write_catalogue
from tests.integration.polling import until

pytestmark = pytest.mark.integration

#: The Trail Boot has 1 unit in the warehouse: scarce below 3.
SCARCE_BOOT = {
    "id": "boot-drop", "name": "Trail Boot drop", "type": "discount", "channels": ["web"], "value": 40.0,
    "base_propensity": 0.3, "product_id": "P-BOOT", "allow_same_type": True,
    "scarcity": {"below_units": 3, "min_value_percentile": 90, "value_percentiles": {"50": 400, "90": 5000}},
}


def web_request(customer_id: str) -> pb.DecideRequest:
    return pb.DecideRequest(channel=WEB, customer=common_pb2.CustomerRef(customer_id=customer_id), max_offers=10)


async def test_a_scarce_item_goes_to_loyal_customers_and_explain_says_why_others_lost_it(
    database_url, serve, tmp_path
):
    catalogue = write_catalogue(tmp_path / "catalogue", [*OFFERS, SCARCE_BOOT])
    mesh = await start_mesh(serve, tmp_path, database_url, catalogue_dir=catalogue)
    ann = await mesh.stub.Decide(web_request("c-ann"), timeout=5)  # gold tier, net value 2,500
    bob = await mesh.stub.Decide(web_request("c-bob"), timeout=5)  # no profile: value percentile 0

    boot = next(o for o in ann.offers if o.offer_id == "boot-drop")
    assert "scarce_loyal" in boot.reason_codes
    assert "boot-drop" not in [o.offer_id for o in bob.offers]
    explained = await mesh.stub.Explain(pb.ExplainRequest(decision_id=bob.decision_id), timeout=5)
    entry = next(c for c in explained.considered if c.offer_id == "boot-drop")
    assert (entry.fate, entry.removed_by) == (pb.OFFER_FATE_REMOVED, "scarce_low_value")
    assert entry.why == "1 unit(s) left at DC1 (scarce below 3); value percentile 0 below 90 and tier none not loyal"

    mesh.inventory.on_hand[("BOOT-42-BRN", "DC1")] = 3  # restocked: no longer scarce, Bob sees it again
    restocked = await mesh.stub.Decide(web_request("c-bob"), timeout=5)
    assert "boot-drop" in [o.offer_id for o in restocked.offers]


async def test_catalogue_edits_reload_without_dropping_requests_and_a_bad_edit_keeps_the_old_one(
    database_url, serve, tmp_path, caplog
):
    folder = write_catalogue(tmp_path / "catalogue")
    mesh = await start_mesh(serve, tmp_path, database_url, catalogue_dir=folder, catalogue_poll_seconds=0.05)
    first = await mesh.stub.Decide(web_request("c-ann"), timeout=5)
    assert first.catalogue_version.startswith("test-1+")
    assert "boot-drop" not in [o.offer_id for o in first.offers]

    replies: list[pb.DecideResponse] = []
    stop = asyncio.Event()

    async def keep_deciding() -> None:
        while not stop.is_set():
            replies.append(await mesh.stub.Decide(web_request("c-ann"), timeout=5))

    traffic = [asyncio.create_task(keep_deciding()) for _ in range(3)]
    write_catalogue(folder, [*OFFERS, SCARCE_BOOT])  # a new offer: the digest part of the version changes

    async def reloaded() -> bool:
        return bool(replies) and replies[-1].catalogue_version != first.catalogue_version

    await until(reloaded)
    stop.set()
    await asyncio.gather(*traffic)  # any failed Decide would raise here
    new_version = replies[-1].catalogue_version
    assert {r.catalogue_version for r in replies} <= {first.catalogue_version, new_version}
    assert "boot-drop" in [o.offer_id for o in replies[-1].offers]
    row = await mesh.repository.decision(replies[-1].decision_id)
    assert row["catalogue_version"] == new_version

    caplog.set_level(logging.ERROR, logger="nextbest.decision.catalogue")
    (folder / "offers.json").write_text('{"version": "test-2", "offers": [{"id": "broken", "type": "coupon"}]}')

    async def rejected() -> bool:
        return any("offers[0].type: unknown offer type 'coupon'" in r.getMessage() for r in caplog.records)

    await until(rejected)
    after = await mesh.stub.Decide(web_request("c-ann"), timeout=5)
    assert after.catalogue_version == new_version  # the old catalogue keeps serving
    assert f"still serving {new_version}" in next(r.getMessage() for r in caplog.records if "coupon" in r.getMessage())


async def test_a_reload_re_reads_the_budget_counters_for_the_new_caps(database_url, serve, tmp_path):
    def with_budget(max_accepts: int) -> list[dict]:
        return [{**o, "budget": {"max_accepts": max_accepts}} if o["id"] == "free-shipping" else o for o in OFFERS]

    folder = write_catalogue(tmp_path / "catalogue", with_budget(5))
    mesh = await start_mesh(serve, tmp_path, database_url, catalogue_dir=folder, catalogue_poll_seconds=0.05)
    shown = await mesh.stub.Decide(web_request("c-ann"), timeout=5)
    assert "free-shipping" in [o.offer_id for o in shown.offers]
    await mesh.stub.RecordOutcome(
        pb.RecordOutcomeRequest(outcome_id="acc-1", decision_id=shown.decision_id, offer_id="free-shipping",
                                type=pb.OUTCOME_TYPE_ACCEPT),
        timeout=5,
    )
    write_catalogue(folder, with_budget(1))  # the operator lowers the cap below what was already accepted

    async def spent() -> bool:
        reply = await mesh.stub.Decide(web_request("c-ann"), timeout=5)
        return reply.catalogue_version != shown.catalogue_version and "free-shipping" not in [
            o.offer_id for o in reply.offers
        ]

    await until(spent)


async def test_the_agent_is_told_what_to_avoid_and_the_action_respects_it(database_url, serve, tmp_path):
    upsell = {"id": "phone-discount", "name": "20% off today", "type": "discount", "channels": ["call_center"],
              "value": 50.0, "base_propensity": 0.5, "script": "Offer 20% off their next order."}
    catalogue = write_catalogue(tmp_path / "catalogue", [*OFFERS, upsell])
    mesh = await start_mesh(serve, tmp_path, database_url, catalogue_dir=catalogue)
    request = pb.PrioritizeCallRequest(customer=common_pb2.CustomerRef(customer_id="c-ann"), call_reason="order_status")
    calm = await mesh.stub.PrioritizeCall(request, timeout=5)
    assert list(calm.avoid) == [] and calm.next_best_action.offer_id == "phone-discount"

    profile, _ = mesh.profile.profiles["c-ann"]
    profile.traits.open_service_issues, profile.traits.recent_returns = 1, 2
    upset = await mesh.stub.PrioritizeCall(request, timeout=5)
    assert list(upset.avoid) == [
        "Do not upsell or cross-sell: the customer has an open complaint.",
        "Do not recommend products like the ones they returned (2 return(s) in 30 days).",
    ]
    assert upset.next_best_action.offer_id == "gold-perk"  # a loyalty perk, not the discount
    row = await mesh.repository.decision(upset.decision_id)
    assert row["request"]["avoid"] == list(upset.avoid)
    removed = {e["offer_id"]: e["removed"] for e in row["trace"]["considered"] if "removed" in e}
    assert removed["phone-discount"] == "open_complaint"

    mesh.identity.marketing["c-ann"] = {WEB}  # marketing consent by phone withdrawn
    withdrawn = await mesh.stub.PrioritizeCall(request, timeout=5)
    assert withdrawn.avoid[-1] == "No marketing: they have not agreed to marketing by phone."
    assert withdrawn.next_best_action.offer_id == "callback"  # only the service action is left


async def test_thompson_sampling_logs_each_shown_offers_probability(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url, exploration_policy="thompson",
                            thompson_strength=50)
    reply = await mesh.stub.Decide(web_request("c-ann"), timeout=5)
    assert reply.offers and all(0 < o.probability <= 1 for o in reply.offers)
    row = await mesh.repository.decision(reply.decision_id)
    exploration = row["trace"]["exploration"]
    assert (exploration["policy"], exploration["strength"]) == ("thompson", 50)
    assert sum(exploration["first_probability"].values()) == pytest.approx(1.0)
    assert exploration["first_probability"][reply.offers[0].offer_id] > 0
    explained = await mesh.stub.Explain(pb.ExplainRequest(decision_id=reply.decision_id), timeout=5)
    ranked = {c.offer_id: c.probability for c in explained.considered if c.fate == pb.OFFER_FATE_RANKED}
    assert ranked == {o.offer_id: pytest.approx(o.probability) for o in reply.offers}


async def test_ab_strategy_arms_are_assigned_by_hash_recorded_and_reported(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url, strategy_b_share=0.5, strategy_salt="ab-test",
                            strategy_b={"exploration_policy": "thompson"})
    customers = [f"c-{i}" for i in range(12)]
    mesh.identity.marketing.update({c: {WEB} for c in customers})
    replies = {c: await mesh.stub.Decide(web_request(c), timeout=5) for c in customers}
    again = await mesh.stub.Decide(web_request("c-0"), timeout=5)
    assert again.arm == replies["c-0"].arm  # deterministic
    for customer_id, reply in replies.items():
        assert reply.arm == strategy_arm(customer_id, 0.5, "ab-test")
        row = await mesh.repository.decision(reply.decision_id)
        assert row["trace"]["arm"] == reply.arm
        # Strategy B explores by Thompson sampling; strategy A (no exploration configured) does not.
        assert ("exploration" in row["trace"]) == (reply.arm == "treatment_b")
    assert {r.arm for r in replies.values()} == {"treatment", "treatment_b"}

    start = Timestamp()
    start.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    report = await mesh.stub.GetReport(
        pb.GetReportRequest(start_time=start, group_by=[pb.REPORT_DIMENSION_ARM]), timeout=5
    )
    units = {row.key.arm: row.decisions for row in report.rows}
    expected_b = sum(r.arm == "treatment_b" for r in [*replies.values(), again])
    assert units == {"treatment": 13 - expected_b, "treatment_b": expected_b}
