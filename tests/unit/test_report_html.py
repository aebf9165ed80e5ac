"""The file report's pieces that need no service: latency percentiles read off the histogram, verdicts, and the
`nextbest report` options that choose the outputs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from nextbest.decision.v1 import decision_service_pb2 as pb

from cli.main import build_parser
from cli.report import format_report, length_text
from cli.report_html import verdict
from services.decision.domain.report import LATENCY_BOUNDS_MS, histogram_quantile

pytestmark = pytest.mark.unit


def at_most(latencies: list[float]) -> list[int]:
    return [sum(1 for v in latencies if v <= bound) for bound in LATENCY_BOUNDS_MS]


def test_histogram_quantile_interpolates_within_the_bucket():
    latencies = [4.0] * 50 + [15.0] * 45 + [150.0] * 5  # buckets (3, 5], (10, 20], (100, 200]
    counts = at_most(latencies)
    assert histogram_quantile(0.5, 100, counts) == pytest.approx(5.0)  # the 50th value closes (3, 5]
    assert 10.0 < histogram_quantile(0.95, 100, counts) <= 20.0
    assert 100.0 < histogram_quantile(0.99, 100, counts) <= 200.0
    assert histogram_quantile(0.25, 100, counts) == pytest.approx(4.0)  # halfway through (3, 5]


def test_histogram_quantile_beyond_the_last_bound_reads_as_it():
    assert histogram_quantile(0.99, 10, at_most([20_000.0] * 10)) == LATENCY_BOUNDS_MS[-1]


@pytest.mark.parametrize(
    ("low", "high", "word"), [(0.01, 0.2, "better"), (-0.3, -0.02, "worse"), (-0.1, 0.2, "not yet significant"),
                              (float("-inf"), float("inf"), "not yet significant")],
)
def test_verdict_reads_the_interval(low, high, word):
    assert verdict(pb.Estimate(value=(low + high) / 2, low=low, high=high)) == word


def test_report_options_choose_the_outputs():
    parse = build_parser().parse_args
    table = parse(["report"])
    assert (table.html, table.json_to, table.bucket, table.json) == (None, None, None, False)
    stdout = parse(["report", "--json"])
    assert stdout.json_to == "-" and stdout.json is False  # the command prints its own JSON, not the raw reply
    files = parse(["report", "--html", "r.html", "--json", "r.json", "--bucket", "15m", "--by", "offer"])
    assert (files.html, files.json_to, files.bucket, files.by) == ("r.html", "r.json", timedelta(minutes=15), ["offer"])
    with pytest.raises(SystemExit):
        parse(["report", "--bucket", "soon"])


def test_attribution_window_option_takes_a_length_or_seconds_and_is_shown():
    parse = build_parser().parse_args
    assert parse(["report"]).attribution_window is None  # the service's default
    assert parse(["report", "--attribution-window", "7d"]).attribution_window == timedelta(days=7)
    assert parse(["report", "--attribution-window", "5400"]).attribution_window == timedelta(minutes=90)
    for bad in ("0", "-3", "soon"):
        with pytest.raises(SystemExit):
            parse(["report", "--attribution-window", bad])
    reply = pb.GetReportResponse()
    reply.attribution_window.FromTimedelta(timedelta(days=2))
    assert "outcomes counted within 2 days of each decision" in format_report(reply, [])
    assert [length_text(timedelta(seconds=s)) for s in (604_800, 3_600, 5_400, 45)] == [
        "1 week", "1 hour", "90 minutes", "45 seconds"]
