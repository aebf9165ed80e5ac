"""GetReport end to end: real decisions and outcomes through the servicer, aggregated in SQL on SQLite and
PostgreSQL, checked against counts, rates, revenue and uplift worked out by hand."""

from __future__ import annotations

import math
from collections import Counter
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2 as profile_pb

from cli.report import format_report
from libs.protoconv import from_timestamp, to_duration, to_timestamp, utcnow
from libs.stats import t_quantile_95
from services.decision.domain.experiment import bucket
from tests.integration.decision_fakes import POS, WEB, start_mesh

pytestmark = pytest.mark.integration

SALT = "report-test"
SHARE = 0.5
D = pb.ReportDimension


def customers_in(arm: str, count: int) -> list[str]:
    """Customer ids the control hash puts in `arm` (so the test needs no control over randomness)."""
    found = []
    for n in range(1000):
        customer_id = f"cust-{n}"
        if (bucket(customer_id, SALT) < SHARE) == (arm == "control"):
            found.append(customer_id)
        if len(found) == count:
            return found
    raise AssertionError("not enough customers")


async def started(serve, tmp_path, database_url):
    mesh = await start_mesh(serve, tmp_path, database_url, control_share=SHARE, control_salt=SALT)
    t1, t2, t3, t4 = customers_in("treatment", 4)
    c1, c2 = customers_in("control", 2)
    segments = {t1: ["vip"], t2: ["vip", "new"], t3: [], c1: ["vip"], c2: []}  # t4 has no profile at all
    for customer_id, names in segments.items():
        profile = profile_pb.Profile(
            customer_id=customer_id, segments=[profile_pb.SegmentMembership(segment=s) for s in names]
        )
        mesh.profile.profiles[customer_id] = (profile, {})
    for customer_id in (t1, t2, t3, t4, c1, c2):
        mesh.identity.marketing[customer_id] = {WEB, POS}
    return mesh, (t1, t2, t3, t4), (c1, c2)


async def decide(mesh, customer_id: str, channel=WEB) -> pb.DecideResponse:
    context = pb.DecisionContext(store_id="S1") if channel == POS else pb.DecisionContext()
    reply = await mesh.stub.Decide(
        pb.DecideRequest(
            channel=channel, customer=common_pb2.CustomerRef(customer_id=customer_id), context=context, max_offers=1
        ),
        timeout=5,
    )
    assert reply.offers, f"{customer_id} got no offer"  # every unit below can take an outcome
    return reply


async def record(mesh, reply: pb.DecideResponse, *outcomes: tuple[int, float]) -> None:
    for index, (kind, revenue) in enumerate(outcomes):
        await mesh.stub.RecordOutcome(
            pb.RecordOutcomeRequest(
                outcome_id=f"{reply.decision_id}-{index}", decision_id=reply.decision_id,
                offer_id=reply.offers[0].offer_id, type=kind, revenue=revenue,
            ),
            timeout=5,
        )


IMPRESSION, CLICK, ACCEPT, DECLINE, PURCHASE = (
    pb.OUTCOME_TYPE_IMPRESSION, pb.OUTCOME_TYPE_CLICK, pb.OUTCOME_TYPE_ACCEPT, pb.OUTCOME_TYPE_DECLINE,
    pb.OUTCOME_TYPE_PURCHASE,
)


async def log_scenario(mesh, treatment, control) -> dict[str, pb.DecideResponse]:
    """Seven units: five in treatment (one at POS), two in control, with the outcomes below."""
    t1, t2, t3, t4 = treatment
    c1, c2 = control
    replies = {name: await decide(mesh, cid) for name, cid in zip(("t1", "t2", "t3", "t4", "c1", "c2"),
                                                                  (t1, t2, t3, t4, c1, c2), strict=True)}
    replies["t1_pos"] = await decide(mesh, t1, POS)
    assert {r.arm for n, r in replies.items() if n.startswith("t")} == {"treatment"}
    assert {r.arm for n, r in replies.items() if n.startswith("c")} == {"control"}
    await record(mesh, replies["t1"], (IMPRESSION, 0), (CLICK, 0), (ACCEPT, 0), (PURCHASE, 50.0))
    await record(mesh, replies["t2"], (IMPRESSION, 0), (DECLINE, 0))
    await record(mesh, replies["t3"], (IMPRESSION, 0), (ACCEPT, 10.0))
    await record(mesh, replies["c1"], (IMPRESSION, 0), (ACCEPT, 20.0))
    await record(mesh, replies["c2"], (IMPRESSION, 0))
    await record(mesh, replies["t1_pos"], (IMPRESSION, 0))
    return replies


def window(**fields) -> pb.GetReportRequest:
    now = utcnow()
    return pb.GetReportRequest(start_time=to_timestamp(now - timedelta(hours=1)), **fields)


def by_key(rows, attribute: str) -> dict:
    return {getattr(row.key, attribute): row for row in rows}


async def test_totals_rates_revenue_and_uplift_match_the_hand_count(database_url, serve, tmp_path):
    mesh, treatment, control = await started(serve, tmp_path, database_url)
    await log_scenario(mesh, treatment, control)

    reply = await mesh.stub.GetReport(window(), timeout=5)

    assert reply.min_sample == 100 and reply.end_time.seconds > reply.start_time.seconds
    (row,) = reply.rows
    assert (row.decisions, row.customers) == (7, 6)
    assert (row.impressions, row.clicks, row.accepts, row.purchases) == (6, 1, 3, 1)  # t1's accept+purchase: one
    assert row.revenue == pytest.approx(80.0)
    assert row.acceptance_rate.value == pytest.approx(3 / 7)
    assert row.acceptance_rate.low < 3 / 7 < row.acceptance_rate.high
    assert row.revenue_per_decision.value == pytest.approx(80 / 7)
    assert row.below_min_sample

    uplift = row.uplift
    assert (uplift.treatment_decisions, uplift.control_decisions) == (5, 2)
    assert uplift.acceptance.value == pytest.approx(2 / 5 - 1 / 2)
    assert uplift.acceptance.low < -0.1 < uplift.acceptance.high
    # Revenue per unit: treatment [50, 0, 10, 0, 0] (mean 12, variance 470), control [20, 0] (mean 10, variance
    # 200); Welch: se^2 = 470/5 + 200/2 = 194, df = 194^2 / (94^2/4 + 100^2/1) = 3.08.
    assert uplift.revenue_per_decision.value == pytest.approx(2.0)
    half = t_quantile_95(194**2 / (94**2 / 4 + 100**2)) * math.sqrt(194)
    assert uplift.revenue_per_decision.low == pytest.approx(2.0 - half)
    assert uplift.revenue_per_decision.high == pytest.approx(2.0 + half)

    small = await mesh.stub.GetReport(window(min_sample=2), timeout=5)
    assert not small.rows[0].below_min_sample  # the smaller arm has exactly 2 units


async def test_groups_by_segment_channel_arm_and_offer(database_url, serve, tmp_path):
    mesh, treatment, control = await started(serve, tmp_path, database_url)
    replies = await log_scenario(mesh, treatment, control)

    by_segment = await mesh.stub.GetReport(window(group_by=[D.REPORT_DIMENSION_SEGMENT]), timeout=5)
    segments = by_key(by_segment.rows, "segment")
    # A decision counts in every segment its customer was in; customers in none count under "".
    assert {name: row.decisions for name, row in segments.items()} == {"vip": 4, "new": 1, "": 3}
    vip = segments["vip"]  # t1 web (accept+purchase 50), t1 pos, t2 (decline), c1 (accept 20)
    assert (vip.customers, vip.accepts, vip.revenue) == (3, 2, pytest.approx(70.0))
    assert (vip.uplift.treatment_decisions, vip.uplift.control_decisions) == (3, 1)
    assert vip.uplift.acceptance.value == pytest.approx(1 / 3 - 1)
    assert math.isinf(vip.uplift.revenue_per_decision.low)  # one control unit: no spread, no interval
    assert not segments["new"].HasField("uplift")  # no control customer in "new"

    # `nextbest report --by segment` prints the same reply as a table, one line per segment.
    table = format_report(by_segment, ["segment"]).splitlines()
    assert table[1].split()[:3] == ["segment", "decisions", "customers"]
    lines = {line.split()[0]: line.split() for line in table[2:5]}
    assert lines["vip"][1:4] == ["4*", "3", "2"] and lines["(none)"][1] == "3*" and lines["new"][-1] == "-"
    assert table[-1].startswith("* fewer than 100 decisions")

    channels = by_key((await mesh.stub.GetReport(window(group_by=[D.REPORT_DIMENSION_CHANNEL]), timeout=5)).rows,
                      "channel")
    assert {c: r.decisions for c, r in channels.items()} == {WEB: 6, POS: 1}
    assert channels[WEB].revenue == pytest.approx(80.0) and channels[POS].impressions == 1

    web_only = await mesh.stub.GetReport(window(channel=WEB), timeout=5)
    assert web_only.rows[0].decisions == 6

    arms = by_key((await mesh.stub.GetReport(window(group_by=[D.REPORT_DIMENSION_ARM]), timeout=5)).rows, "arm")
    assert {a: (r.decisions, r.accepts) for a, r in arms.items()} == {"treatment": (5, 2), "control": (2, 1)}
    assert not any(r.HasField("uplift") for r in arms.values())

    offers = (await mesh.stub.GetReport(
        window(group_by=[D.REPORT_DIMENSION_OFFER, D.REPORT_DIMENSION_ARM]), timeout=5)).rows
    shown = Counter((r.offers[0].offer_id, r.arm) for r in replies.values())
    assert {(r.key.offer_id, r.key.arm): r.decisions for r in offers} == dict(shown)
    assert sum(r.accepts for r in offers) == 3 and sum(r.revenue for r in offers) == pytest.approx(80.0)

    # Every dimension at once: one unit per showing and segment (t2 counts twice, in "vip" and "new").
    everything = (await mesh.stub.GetReport(window(group_by=[
        D.REPORT_DIMENSION_CATALOGUE_VERSION, D.REPORT_DIMENSION_SEGMENT, D.REPORT_DIMENSION_OFFER,
        D.REPORT_DIMENSION_CHANNEL, D.REPORT_DIMENSION_MODEL_VERSION, D.REPORT_DIMENSION_ARM]), timeout=5)).rows
    assert sum(r.decisions for r in everything) == 8 and sum(r.revenue for r in everything) == pytest.approx(80.0)
    assert {r.key.catalogue_version for r in everything} == {replies["t1"].catalogue_version}

    t1_offer = replies["t1"].offers[0].offer_id
    filtered = await mesh.stub.GetReport(window(offer_id=t1_offer, group_by=[D.REPORT_DIMENSION_MODEL_VERSION]),
                                         timeout=5)
    (row,) = filtered.rows
    assert row.key.model_version == "m-test-3" and row.key.offer_id == ""
    assert row.decisions == sum(n for (offer, _), n in shown.items() if offer == t1_offer)


async def test_empty_window_and_decisions_outside_it(database_url, serve, tmp_path):
    mesh, treatment, control = await started(serve, tmp_path, database_url)
    await decide(mesh, treatment[0])
    later = utcnow() + timedelta(minutes=1)
    after = await mesh.stub.GetReport(
        pb.GetReportRequest(start_time=to_timestamp(later), end_time=to_timestamp(later + timedelta(hours=1))),
        timeout=5,
    )
    assert list(after.rows) == []
    before = await mesh.stub.GetReport(
        pb.GetReportRequest(start_time=to_timestamp(later - timedelta(days=2)),
                            end_time=to_timestamp(later - timedelta(days=1))), timeout=5)
    assert list(before.rows) == []


async def test_outcomes_count_only_within_the_attribution_window(database_url, serve, tmp_path):
    """A purchase just inside the window counts (accept, revenue, uplift), one just outside or before the decision
    does not; the window is the request's, else the service's setting, and is echoed."""
    mesh = await start_mesh(serve, tmp_path, database_url, control_share=SHARE, control_salt=SALT,
                            attribution_window_seconds=2 * 3600)
    t1, t2, t3 = customers_in("treatment", 3)
    (c1,) = customers_in("control", 1)
    for customer_id in (t1, t2, t3, c1):
        mesh.identity.marketing[customer_id] = {WEB}
    inside, outside, early, control = [await decide(mesh, c) for c in (t1, t2, t3, c1)]
    hour = timedelta(hours=1)

    async def purchase(reply: pb.DecideResponse, after: timedelta, revenue: float) -> None:
        await mesh.stub.RecordOutcome(pb.RecordOutcomeRequest(
            outcome_id=f"{reply.decision_id}-late", decision_id=reply.decision_id, offer_id=reply.offers[0].offer_id,
            type=PURCHASE, revenue=revenue, occurred_at=to_timestamp(from_timestamp(reply.decided_at) + after),
        ), timeout=5)

    await purchase(inside, hour - timedelta(seconds=1), 40.0)
    await purchase(outside, hour + timedelta(seconds=1), 25.0)
    await purchase(early, -timedelta(seconds=1), 7.0)  # before the decision was made: never its doing
    await purchase(control, hour + timedelta(seconds=1), 5.0)

    one_hour = await mesh.stub.GetReport(window(attribution_window=to_duration(hour), min_sample=1), timeout=5)
    assert one_hour.attribution_window.ToTimedelta() == hour
    (row,) = one_hour.rows
    assert (row.decisions, row.accepts, row.purchases, row.revenue) == (4, 1, 1, 40.0)
    assert row.uplift.acceptance.value == pytest.approx(1 / 3)  # treatment 1 of 3, control's late purchase is out
    assert row.uplift.revenue_per_decision.value == pytest.approx(40.0 / 3)

    default = await mesh.stub.GetReport(window(min_sample=1), timeout=5)  # the service's two hours
    assert default.attribution_window.ToTimedelta() == 2 * hour
    (row,) = default.rows
    assert (row.accepts, row.purchases, row.revenue) == (3, 3, 70.0)
    assert row.uplift.acceptance.value == pytest.approx(2 / 3 - 1)
    per_offer = await mesh.stub.GetReport(
        window(group_by=[D.REPORT_DIMENSION_OFFER], attribution_window=to_duration(hour)), timeout=5)
    assert sum(r.revenue for r in per_offer.rows) == 40.0  # the same rule when the unit is a showing


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "start_time"),
        ({"group_by": [99]}, "group_by[0]"),
        ({"group_by": [D.REPORT_DIMENSION_UNSPECIFIED]}, "group_by[0]"),
        ({"group_by": [D.REPORT_DIMENSION_ARM, D.REPORT_DIMENSION_ARM]}, "group_by[1]"),
        ({"channel": 42}, "channel"),
        ({"offer_id": "x" * 129}, "offer_id"),
        ({"min_sample": -1}, "min_sample"),
        ({"attribution_window": duration_pb2.Duration(seconds=0)}, "attribution_window"),
        ({"attribution_window": duration_pb2.Duration(seconds=-60)}, "attribution_window"),
    ],
)
async def test_bad_requests_are_invalid_argument(fields, field, serve, tmp_path, sqlite_url):
    mesh = await start_mesh(serve, tmp_path, sqlite_url)
    request = pb.GetReportRequest(**fields)
    if field != "start_time":
        request.start_time.CopyFrom(to_timestamp(utcnow() - timedelta(hours=1)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.stub.GetReport(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}:")


async def test_inverted_or_unrepresentable_window_is_invalid_argument(serve, tmp_path, sqlite_url):
    mesh = await start_mesh(serve, tmp_path, sqlite_url)
    now = utcnow()
    inverted = pb.GetReportRequest(start_time=to_timestamp(now), end_time=to_timestamp(now - timedelta(seconds=1)))
    empty = pb.GetReportRequest(start_time=to_timestamp(now), end_time=to_timestamp(now))
    beyond = pb.GetReportRequest()
    beyond.start_time.seconds = 10**12  # after year 9999
    for request, field in ((inverted, "end_time"), (empty, "end_time"), (beyond, "start_time")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await mesh.stub.GetReport(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(f"{field}:")
