"""Decide end to end: the real decision service against fake dependencies, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb
from sqlalchemy import func, select

from libs.settings import CommonSettings
from services.decision.app import build
from services.decision.catalogue import parse_catalogue
from services.decision.features import RequestContext, offer_features
from services.decision.settings import DecisionSettings
from services.decision.storage import decisions
from tests.integration.decision_fakes import (
    EMAIL,
    OFFERS,
    POS,
    PRODUCTS,
    WEB,
    sent_offer_features,
    start_mesh,
    write_catalogue,
)

pytestmark = pytest.mark.integration


def web_request(email: str = "ann@example.com", **fields) -> pb.DecideRequest:
    return pb.DecideRequest(
        channel=WEB, customer=common_pb2.CustomerRef(identifiers=[common_pb2.Identifier(type=EMAIL, value=email)]),
        **fields,
    )


async def without_deadline(call):
    """Send no client deadline, so the service's own budget applies (bounded here only to never hang a test)."""
    return await asyncio.wait_for(call, 5)


async def decision_count(mesh) -> int:
    async with mesh.repository.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(decisions))).scalar_one()


async def test_happy_path_ranks_by_propensity_value_lever_and_context(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    mesh.scoring.probabilities = {"sneaker-discount": 0.3, "tee-discount": 0.5, "cap-cross-sell": 0.9,
                                  "free-shipping": 0.5, "gold-perk": 0.2}
    reply = await mesh.stub.Decide(web_request(max_offers=10, context=pb.DecisionContext(page="product")), timeout=5)

    assert reply.customer_id == "c-ann" and len(reply.decision_id) == 32
    assert not reply.degraded and list(reply.degraded_reasons) == []
    assert reply.model_version == "m-test-3" and reply.catalogue_version.startswith("test-1+")
    assert reply.decided_at.seconds > 0
    ranked = [(o.offer_id, o.rank, round(o.score, 6)) for o in reply.offers]
    assert ranked == [
        ("sneaker-discount", 1, 4.5),  # 0.3 x 15 x 1
        ("tee-discount", 2, 3.0),  # 0.5 x 6 x 1
        ("cap-cross-sell", 3, 2.7),  # 0.9 x 3 x 1
        ("free-shipping", 4, 2.6),  # 0.5 x 4 x 1 x 1.3: Ann pays for shipping on 70% of orders
        ("gold-perk", 5, 2.4),  # 0.2 x 8 x 1.5
    ]
    by_id = {o.offer_id: o for o in reply.offers}
    assert list(by_id["sneaker-discount"].reason_codes) == ["model_propensity", "in_stock", "consented"]
    assert list(by_id["free-shipping"].reason_codes) == ["model_propensity", "consented", "pays_for_shipping"]
    sneaker = by_id["sneaker-discount"]
    assert (sneaker.type, sneaker.propensity, sneaker.value, sneaker.lever) == (pb.OFFER_TYPE_DISCOUNT, 0.3, 15.0, 1.0)

    # One Score call with every eligible candidate, the profile's features and the trained offer features.
    assert len(mesh.scoring.requests) == 1
    score_request = mesh.scoring.requests[0]
    assert score_request.customer_id == "c-ann"
    assert dict(score_request.customer_features) == {"cust_order_count": 12.0, "cust_net_value": 2500.0}
    catalogue = parse_catalogue({"version": "test-1", "offers": OFFERS}, {"products": PRODUCTS})
    expected = offer_features(catalogue.offer("tee-discount"), RequestContext(channel="web"), catalogue)
    assert all(not c.offer_features for c in score_request.candidates)  # sent as one column block instead
    sent = sent_offer_features(score_request)
    assert sent["tee-discount"] == pytest.approx(expected)
    assert set(sent) == {"tee-discount", "sneaker-discount", "sneaker-preorder", "free-shipping", "gold-perk",
                         "cap-cross-sell"}
    # Web stock comes from the warehouse only.
    assert list(mesh.inventory.requests[0].location_ids) == ["DC1"]

    row = await mesh.repository.decision(reply.decision_id)
    assert row["customer_id"] == "c-ann" and row["channel"] == "web" and row["degraded"] is False
    assert row["model_version"] == "m-test-3" and row["catalogue_version"] == reply.catalogue_version
    assert [o["offer_id"] for o in row["offers"]] == [o.offer_id for o in reply.offers]
    # The features scored are logged as they were, so training sets never see later events.
    assert row["request"]["customer_features"] == {"cust_order_count": 12.0, "cust_net_value": 2500.0}
    trace = {entry["offer_id"]: entry for entry in row["trace"]["considered"]}
    assert set(trace) == {o["id"] for o in OFFERS}  # every offer of the catalogue, with its fate
    assert trace["sneaker-preorder"] == {"offer_id": "sneaker-preorder", "removed": "in_stock_no_pre_order"}
    assert trace["callback"] == {"offer_id": "callback", "removed": "channel"}
    assert trace["free-shipping"]["factors"] == ["pays_for_shipping"] and trace["free-shipping"]["rank"] == 4


async def test_default_max_offers_and_long_dwell_reorders(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    mesh.scoring.probabilities = {"sneaker-discount": 0.3, "tee-discount": 0.6, "cap-cross-sell": 0.9}
    dwelling = pb.DecisionContext(page="product", sku="TEE-M-WHT")
    dwelling.dwell.FromSeconds(40)
    reply = await mesh.stub.Decide(web_request(context=dwelling), timeout=5)
    assert [o.offer_id for o in reply.offers] == ["tee-discount", "sneaker-discount", "cap-cross-sell"]  # 3 by default
    # 0.6 x 6 x 1.5 = 5.4 overtakes the sneaker's 0.3 x 15 = 4.5.
    assert reply.offers[0].score == pytest.approx(5.4) and "long_dwell" in reply.offers[0].reason_codes
    sent = sent_offer_features(mesh.scoring.requests[0])
    assert sent["tee-discount"]["ctx_dwell_seconds"] == 40 and sent["tee-discount"]["ctx_viewing_offer_product"] == 1


async def test_web_prefill_uses_preferred_size_colour_and_saved_shipping(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    reply = await mesh.stub.Decide(web_request(max_offers=10), timeout=5)
    by_id = {o.offer_id: o.prefill for o in reply.offers}
    tee = by_id["tee-discount"]  # Ann prefers L and black, and black L is in the warehouse
    assert (tee.sku, tee.size, tee.colour, tee.quantity, tee.shipping_method) == (
        "TEE-L-BLK", "L", "black", 1, "express")
    # No sneaker in L; black 42 is not in the warehouse: the first in-stock variant.
    assert by_id["sneaker-discount"].sku == "SNK-41-WHT"
    assert by_id["cap-cross-sell"].sku == "CAP-OS-RED"


async def test_slow_scoring_degrades_within_the_budget(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url, budget_web_ms=100)
    await mesh.stub.Decide(web_request(), timeout=5)  # connections warm, as in steady state
    mesh.scoring.behaviour.delay = 5.0
    started = time.monotonic()
    reply = await without_deadline(mesh.stub.Decide(web_request(max_offers=10)))
    elapsed = time.monotonic() - started
    assert elapsed < 0.3, f"answered in {elapsed:.3f}s with a 100 ms budget"
    assert reply.degraded and list(reply.degraded_reasons) == ["scoring_timeout"]
    assert reply.model_version == ""
    assert reply.offers and all(o.reason_codes[0] == "rule_propensity" for o in reply.offers)
    # Catalogue priors rank: gold-perk 0.3 x 8 x 1.5 = 3.6, free-shipping 0.4 x 4 x 1.3 = 2.08, sneaker 0.1 x 15 = 1.5
    assert [o.offer_id for o in reply.offers][:3] == ["gold-perk", "free-shipping", "sneaker-discount"]
    assert (await mesh.repository.decision(reply.decision_id))["degraded_reasons"] == ["scoring_timeout"]


async def test_scoring_port_closed_degrades_to_rules(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url, closed=("scoring",), budget_web_ms=100)
    # Warm identity, profile and inventory connections: a cold first call on a busy machine can spend the whole
    # 100 ms budget on identity, and this test is about the closed scoring port.
    await mesh.stub.Decide(web_request(), timeout=5)
    started = time.monotonic()
    reply = await without_deadline(mesh.stub.Decide(web_request()))
    assert time.monotonic() - started < 0.3
    assert reply.degraded and list(reply.degraded_reasons) == ["scoring_unavailable"]
    assert reply.offers and all("rule_propensity" in o.reason_codes for o in reply.offers)


async def test_no_registered_model_degrades_to_rules(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    mesh.scoring.behaviour.fail = grpc.StatusCode.FAILED_PRECONDITION
    reply = await mesh.stub.Decide(web_request(), timeout=5)
    assert list(reply.degraded_reasons) == ["no_model"] and reply.offers


async def test_a_client_deadline_bounds_the_call(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url, budget_web_ms=10_000)
    await mesh.stub.Decide(web_request(), timeout=5)  # warm connections: the budget is about hangs, not cold starts
    mesh.scoring.behaviour.delay = 5.0
    started = time.monotonic()
    # A reply at all proves the budget: past the client's 0.4 s (the channel's default budget is 10 s) the call would
    # end in DEADLINE_EXCEEDED instead.
    reply = await mesh.stub.Decide(web_request(), timeout=0.4)
    assert time.monotonic() - started < 1.0  # and it did not wait for the 5 s scoring delay
    assert list(reply.degraded_reasons) == ["scoring_timeout"]


async def test_profile_scoring_and_inventory_hanging_still_answer_in_time(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url, budget_web_ms=150)
    await mesh.stub.Decide(web_request(), timeout=5)  # warm connections
    for behaviour in (mesh.profile.get, mesh.scoring.behaviour, mesh.inventory.behaviour):
        behaviour.delay = 5.0
    started = time.monotonic()
    reply = await without_deadline(mesh.stub.Decide(web_request(max_offers=10)))
    assert time.monotonic() - started < 0.4
    assert list(reply.degraded_reasons) == ["profile_unavailable", "scoring_timeout", "inventory_unavailable"]
    # Consent is known, the tier is not, stock is not: only the offer bound to no product remains, on its prior.
    assert [(o.offer_id, o.reason_codes[0]) for o in reply.offers] == [("free-shipping", "rule_propensity")]


@pytest.mark.parametrize("failure", ["closed", "slow"])
async def test_identity_down_or_slow_continues_as_an_anonymous_visitor(database_url, serve, tmp_path, failure):
    mesh = await start_mesh(serve, tmp_path, database_url, budget_web_ms=100,
                            closed=("identity",) if failure == "closed" else ())
    mesh.identity.resolve.delay = 5.0
    started = time.monotonic()
    reply = await without_deadline(mesh.stub.Decide(web_request()))
    assert time.monotonic() - started < 0.3
    assert reply.customer_id == "" and list(reply.degraded_reasons) == ["identity_unavailable"]
    assert list(reply.offers) == []
    row = await mesh.repository.decision(reply.decision_id)
    assert row["trace"]["no_offer_reason"] == "nothing_eligible"
    assert reply.no_offer_reason == "nothing_eligible"
    assert {e["removed"] for e in row["trace"]["considered"]} >= {"no_marketing_consent"}


async def test_profile_down_treats_the_customer_as_new(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    mesh.profile.get.fail = grpc.StatusCode.UNAVAILABLE
    reply = await mesh.stub.Decide(web_request(max_offers=10), timeout=5)
    assert reply.customer_id == "c-ann" and list(reply.degraded_reasons) == ["profile_unavailable"]
    ids = [o.offer_id for o in reply.offers]
    assert "gold-perk" not in ids and "tee-discount" in ids  # tier unknown, consent still known
    assert dict(mesh.scoring.requests[0].customer_features) == {}


async def test_consent_unavailable_suppresses_marketing(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    mesh.identity.consent.fail = grpc.StatusCode.UNAVAILABLE
    reply = await mesh.stub.Decide(web_request(), timeout=5)
    assert list(reply.degraded_reasons) == ["consent_unavailable"] and list(reply.offers) == []
    row = await mesh.repository.decision(reply.decision_id)
    assert {e.get("removed") for e in row["trace"]["considered"]} == {"consent_unknown", "channel"}


async def test_withdrawn_marketing_consent_suppresses_marketing_offers(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    mesh.identity.marketing["c-ann"] = {POS}
    reply = await mesh.stub.Decide(web_request(), timeout=5)
    assert not reply.degraded and list(reply.offers) == []
    row = await mesh.repository.decision(reply.decision_id)
    removed = {e["offer_id"]: e.get("removed") for e in row["trace"]["considered"]}
    assert removed["tee-discount"] == removed["free-shipping"] == "no_marketing_consent"


async def test_inventory_down_suppresses_product_offers_and_ranks_the_rest(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    mesh.inventory.behaviour.fail = grpc.StatusCode.UNAVAILABLE
    reply = await mesh.stub.Decide(web_request(max_offers=10), timeout=5)
    assert list(reply.degraded_reasons) == ["inventory_unavailable"]
    assert sorted(o.offer_id for o in reply.offers) == ["free-shipping", "gold-perk"]
    assert all(not o.HasField("prefill") for o in reply.offers)


async def test_sold_out_product_is_suppressed_and_turns_into_a_pre_order(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    for sku in ("SNK-41-WHT", "SNK-42-WHT"):
        mesh.inventory.on_hand[(sku, "DC1")] = 0
    reply = await mesh.stub.Decide(web_request(max_offers=10), timeout=5)
    by_id = {o.offer_id: o for o in reply.offers}
    assert "sneaker-discount" not in by_id
    pre_order = by_id["sneaker-preorder"]
    assert pre_order.type == pb.OFFER_TYPE_PRE_ORDER and "pre_order_sold_out" in pre_order.reason_codes
    assert pre_order.prefill.sku == "SNK-42-BLK"  # no L, so the preferred colour black
    row = await mesh.repository.decision(reply.decision_id)
    removed = {e["offer_id"]: e.get("removed") for e in row["trace"]["considered"]}
    assert removed["sneaker-discount"] == "out_of_stock"


async def test_a_sold_out_variant_being_viewed_is_offered_as_a_pre_order(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    mesh.scoring.probabilities = {"sneaker-preorder": 0.6}
    reply = await mesh.stub.Decide(web_request(max_offers=10, context=pb.DecisionContext(sku="SNK-42-BLK")), timeout=5)
    by_id = {o.offer_id: o for o in reply.offers}
    # Other sizes are in stock, so the discount stays; the black 42 the customer looks at becomes a pre-order.
    assert by_id["sneaker-preorder"].prefill.sku == "SNK-42-BLK"
    # One offer per product: the pre-order (0.6 x 10 = 6) beats the discount (0.1 x 15 = 1.5).
    assert "sneaker-discount" not in by_id
    row = await mesh.repository.decision(reply.decision_id)
    dropped = {e["offer_id"]: e.get("dropped") for e in row["trace"]["considered"]}
    assert dropped["sneaker-discount"] == "diversity"


async def test_unknown_identifiers_give_an_anonymous_decision_without_degrading(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    reply = await mesh.stub.Decide(web_request("nobody@example.com"), timeout=5)
    assert reply.customer_id == "" and not reply.degraded
    assert mesh.identity.resolve_requests[0].create_if_missing is False


async def test_new_customer_without_profile_gets_offers_for_everyone(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    reply = await mesh.stub.Decide(web_request("bob@example.com", max_offers=10), timeout=5)
    assert reply.customer_id == "c-bob" and not reply.degraded
    ids = {o.offer_id for o in reply.offers}
    assert "gold-perk" not in ids and {"tee-discount", "free-shipping"} <= ids


async def test_decide_by_customer_id_skips_resolution(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    reply = await mesh.stub.Decide(
        pb.DecideRequest(channel=WEB, customer=common_pb2.CustomerRef(customer_id="c-ann")), timeout=5
    )
    assert reply.customer_id == "c-ann" and mesh.identity.resolve_requests == []


async def test_pos_sold_out_sku_gives_associate_actions_with_stock(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    request = pb.DecideRequest(
        channel=POS,
        customer=common_pb2.CustomerRef(customer_id="c-ann"),
        context=pb.DecisionContext(store_id="S1", sku="SNK-42-WHT"),
        max_offers=6,
    )
    reply = await mesh.stub.Decide(request, timeout=5)
    # POS: offers and alternatives on this store's shelf; only the viewed SKU at every location.
    lookups = sorted((list(r.skus), list(r.location_ids)) for r in mesh.inventory.requests)
    assert lookups == [([], ["S1"]), (["SNK-42-WHT"], [])]
    ids = [o.offer_id for o in reply.offers]
    # Actions: 0.5 x 27 = 13.5, 0.4 x 27 = 10.8, 0.3 x 27 = 8.1 rank above the catalogue's offers.
    assert ids[:3] == ["action:in_store_alternative", "action:ship_to_home", "action:reserve_nearby"]
    assert set(ids[3:]) == {"sneaker-discount", "tee-discount", "gold-perk"}
    by_id = {o.offer_id: o for o in reply.offers}
    alternative = by_id["action:in_store_alternative"]
    assert alternative.type == pb.OFFER_TYPE_SERVICE_ACTION
    assert [(h.sku, h.location_id, h.on_hand) for h in alternative.stock] == [("SNK-42-BLK", "S1", 2)]
    assert [(h.sku, h.location_id, h.on_hand) for h in by_id["action:ship_to_home"].stock] == [("SNK-42-WHT", "DC1", 3)]
    nearby = by_id["action:reserve_nearby"]
    assert [(h.location_id, h.on_hand) for h in nearby.stock] == [("S3", 4)] and "store S3" in nearby.script
    assert all(o.script for o in reply.offers) and all(not o.HasField("prefill") for o in reply.offers)
    tee = by_id["tee-discount"]
    assert tee.stock[0].location_id == "S1" and "in this store" in tee.script

    # The same SKU on the shelf: no associate actions.
    mesh.inventory.on_hand[("SNK-42-WHT", "S1")] = 1
    reply = await mesh.stub.Decide(request, timeout=5)
    assert not any(o.offer_id.startswith("action:") for o in reply.offers)


async def test_call_centre_decide_gives_one_scripted_offer(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url)
    request = pb.DecideRequest(
        channel=common_pb2.CHANNEL_CALL_CENTER, customer=common_pb2.CustomerRef(customer_id="c-ann")
    )
    reply = await mesh.stub.Decide(request, timeout=5)
    assert len(reply.offers) == 1 and reply.offers[0].script


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.DecideRequest(customer=common_pb2.CustomerRef(customer_id="c-ann")), "channel"),
        (pb.DecideRequest(channel=common_pb2.CHANNEL_EMAIL, customer=common_pb2.CustomerRef(customer_id="c-ann")),
         "channel"),
        (pb.DecideRequest(channel=WEB), "customer"),
        (pb.DecideRequest(channel=WEB, customer=common_pb2.CustomerRef(customer_id="c-ann"), max_offers=21),
         "max_offers"),
        (pb.DecideRequest(channel=POS, customer=common_pb2.CustomerRef(customer_id="c-ann")), "context.store_id"),
        (web_request("not-an-email"), "customer.identifiers[0].value"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(database_url, serve, tmp_path, request_, field):
    mesh = await start_mesh(serve, tmp_path, database_url)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await mesh.stub.Decide(request_, timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}: ")
    assert await decision_count(mesh) == 0  # nothing logged for a rejected request


async def test_a_missing_catalogue_fails_start_up_with_its_message(tmp_path, sqlite_url):
    settings = DecisionSettings(database_url=sqlite_url, port=0, common=CommonSettings(data_dir=tmp_path))
    app = build(settings)
    with pytest.raises(SystemExit) as stopped:
        await app.on_start()
    assert "catalogue/offers.json: missing" in str(stopped.value)
    await app.on_stop()


async def test_an_invalid_catalogue_fails_start_up_naming_the_entry(tmp_path, sqlite_url):
    folder = write_catalogue(tmp_path / "bad", offers=[{**OFFERS[0], "type": "coupon"}])
    app = build(DecisionSettings(database_url=sqlite_url, port=0, catalogue_dir=folder,
                                 common=CommonSettings(data_dir=tmp_path)))
    with pytest.raises(SystemExit) as stopped:
        await app.on_start()
    assert "offers[0].type: unknown offer type 'coupon'" in str(stopped.value)
    await app.on_stop()


async def test_offers_listing_placements_show_only_in_them_and_a_malformed_placement_is_rejected(
    database_url, serve, tmp_path
):
    offers = [{**o, "placements": ["checkout"]} if o["id"] == "free-shipping" else o for o in OFFERS]
    mesh = await start_mesh(serve, tmp_path, database_url, catalogue_dir=write_catalogue(tmp_path / "placed", offers))
    at_checkout = await mesh.stub.Decide(
        web_request(max_offers=10, context=pb.DecisionContext(placement="checkout")), timeout=5
    )
    on_home = await mesh.stub.Decide(web_request(max_offers=10, context=pb.DecisionContext(placement="home")), timeout=5)
    assert "free-shipping" in {o.offer_id for o in at_checkout.offers}
    assert "free-shipping" not in {o.offer_id for o in on_home.offers}
    row = await mesh.repository.decision(on_home.decision_id)
    removed = {e["offer_id"]: e.get("removed") for e in row["trace"]["considered"]}
    assert removed["free-shipping"] == "placement"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await mesh.stub.Decide(web_request(context=pb.DecisionContext(placement="Home Page")), timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "context.placement" in error.value.details()
