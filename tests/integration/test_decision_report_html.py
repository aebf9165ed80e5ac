"""The marketing manager's report end to end: real decisions and outcomes through the servicer on SQLite and
PostgreSQL, GetReport's time buckets, degraded counts and latency percentiles, and the HTML and JSON built from
the answers (numbers present, charts inline, nothing fetched from outside, buckets adding up to the totals)."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import grpc
import pytest
from nextbest.decision.v1 import decision_service_pb2 as pb

from cli.main import build_parser
from cli.report_html import collect, render_html, to_json
from libs.protoconv import to_timestamp, utcnow
from libs.server import ServiceApp
from tests.integration.decision_fakes import WEB, start_mesh
from tests.integration.test_decision_report import customers_in, decide, log_scenario, started

pytestmark = pytest.mark.integration

SUMMED = ("decisions", "impressions", "clicks", "accepts", "purchases", "degraded")


def last_hour() -> pb.GetReportRequest:
    now = utcnow()
    return pb.GetReportRequest(start_time=to_timestamp(now - timedelta(hours=1)),
                               end_time=to_timestamp(now + timedelta(seconds=1)))


async def test_html_report_shows_the_numbers_and_inline_charts_and_the_buckets_add_up(database_url, serve, tmp_path):
    mesh, treatment, control = await started(serve, tmp_path, database_url)
    await log_scenario(mesh, treatment, control)  # 7 units: 5 treatment, 2 control, 3 accepted, revenue 80
    request = last_hour()
    request.group_by.append(pb.REPORT_DIMENSION_CHANNEL)

    report = await collect(mesh.stub.GetReport, request, ["channel"], None)

    total = report.total
    assert (total.decisions, total.accepts, total.degraded) == (7, 3, 0)
    assert total.latency.measured == 7 and 0 < total.latency.p50_ms <= total.latency.p95_ms <= total.latency.p99_ms
    assert report.bucket_width == timedelta(hours=1)  # an hour's window is charted per hour
    series = list(report.series.rows)
    assert series and all(row.key.bucket_start.seconds % 3600 == 0 for row in series)  # on the UTC hour
    for name in SUMMED:
        assert sum(getattr(row, name) for row in series) == getattr(total, name), name
    assert sum(row.revenue for row in series) == pytest.approx(total.revenue)
    assert sum(row.latency.measured for row in series) == total.latency.measured

    page = render_html(report)

    for shown in ("Decisions", ">7<", "42.9%", "11.43", "80.00", "Not yet significant", "10.0 percentage points less often",
                  "5 targeted and 2 control decisions", "Decision latency p95", "<td class=\"key\">web</td>"):
        assert shown in page, shown
    assert page.count("<svg") == 4  # acceptance, uplift, degraded rate, latency
    assert "Acceptance rate" in page and "Uplift in acceptance" in page and "Degraded decisions" in page
    # Self-contained: no address outside the page, no script, every reference internal to the page.
    assert not re.search(r"(?:https?|ftp|file):|//[\w.-]+\.\w|<script|\bsrc=|url\((?!#)", page)
    assert all(target.startswith("#") for target in re.findall(r'href="([^"]*)"', page))

    document = json.loads(to_json(report))
    assert document["totals"]["decisions"] == "7"  # int64 is a string in protobuf JSON
    assert document["verdict"] == {"acceptance": "not yet significant", "revenue_per_decision": "not yet significant"}
    assert {row["key"]["channel"]: int(row["decisions"]) for row in document["rows"]} == {
        "CHANNEL_WEB": 6, "CHANNEL_POS": 1}
    assert sum(int(row["decisions"]) for row in document["series"]) == 7
    assert document["bucket_width_seconds"] == 3600
    assert document["attribution_window_seconds"] == 7 * 86_400  # the service's default, echoed
    assert "within 1 week of the decision" in page


async def test_the_command_writes_both_files_from_the_running_service(serve, tmp_path, sqlite_url, capsys):
    mesh, treatment, control = await started(serve, tmp_path, sqlite_url)
    await log_scenario(mesh, treatment, control)
    # The CLI needs an address: the same servicer behind a second port (its hooks already ran).
    server, _ = await serve(ServiceApp("decision-cli", mesh.app.registrations))
    page, data = tmp_path / "report.html", tmp_path / "report.json"
    args = build_parser().parse_args([
        "report", "--since", "1h", "--by", "arm", "--html", str(page), "--json", str(data),
        "--attribution-window", "2d", "--target", f"127.0.0.1:{server.port}",
    ])

    assert await args.func(args) == 0

    assert capsys.readouterr().out.strip() == f"wrote {page}"
    html = page.read_text(encoding="utf-8")
    assert "<svg" in html and '<td class="key">treatment</td>' in html and '<td class="key">control</td>' in html
    document = json.loads(data.read_text(encoding="utf-8"))
    assert {row["key"]["arm"]: int(row["decisions"]) for row in document["rows"]} == {"treatment": 5, "control": 2}
    assert sum(int(row["decisions"]) for row in document["series"]) == int(document["totals"]["decisions"]) == 7
    assert document["attribution_window_seconds"] == 2 * 86_400 and "within 2 days of the decision" in html


async def test_minute_buckets_split_by_decision_time_and_add_up(database_url, serve, tmp_path):
    mesh, treatment, control = await started(serve, tmp_path, database_url)
    await log_scenario(mesh, treatment, control)
    request = last_hour()
    request.bucket_width.FromTimedelta(timedelta(minutes=1))
    request.group_by.append(pb.REPORT_DIMENSION_ARM)

    rows = (await mesh.stub.GetReport(request, timeout=5)).rows

    assert all(row.key.bucket_start.seconds % 60 == 0 for row in rows)
    starts = [(row.key.bucket_start.seconds, row.key.arm) for row in rows]
    assert starts == sorted(starts)  # ordered by time, then key
    by_arm = {arm: sum(row.decisions for row in rows if row.key.arm == arm) for arm in ("treatment", "control")}
    assert by_arm == {"treatment": 5, "control": 2}


async def test_degraded_decisions_are_counted_and_charted(database_url, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, database_url, closed=("scoring",), budget_web_ms=300)
    for customer_id in customers_in("treatment", 2):
        mesh.identity.marketing[customer_id] = {WEB}
        reply = await decide(mesh, customer_id)
        assert reply.degraded

    report = await collect(mesh.stub.GetReport, last_hour(), [], timedelta(minutes=30))

    assert report.total.degraded == 2 and sum(row.degraded for row in report.series.rows) == 2
    page = render_html(report)
    assert "100.0%" in page and "2 fell back" in page
    assert "Uplift: not measurable" in page  # no control decisions in the window
    assert page.count("<svg") == 3  # no uplift chart without a control group


async def test_empty_window_renders_a_page_saying_so(serve, tmp_path, sqlite_url):
    mesh = await start_mesh(serve, tmp_path, sqlite_url)
    report = await collect(mesh.stub.GetReport, last_hour(), [], None)
    assert report.total is None and "No decisions in the window." in render_html(report)
    assert json.loads(to_json(report))["series"] == []


@pytest.mark.parametrize(
    ("width", "window"),
    [(timedelta(seconds=30), timedelta(hours=1)), (timedelta(seconds=90.5), timedelta(hours=1)),
     (-timedelta(hours=1), timedelta(hours=1)), (timedelta(minutes=1), timedelta(days=30)),
     (None, timedelta(hours=1))],  # None: more seconds than a duration holds
)
async def test_bad_bucket_width_is_invalid_argument(width, window, serve, tmp_path, sqlite_url):
    mesh = await start_mesh(serve, tmp_path, sqlite_url)
    now = utcnow()
    request = pb.GetReportRequest(start_time=to_timestamp(now - window), end_time=to_timestamp(now))
    if width is None:
        request.bucket_width.seconds = 10**18
    else:
        request.bucket_width.FromTimedelta(width)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.stub.GetReport(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("bucket_width:")
