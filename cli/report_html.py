"""The marketing manager's report: `nextbest report --html FILE` and `--json [FILE]`.

Built only from GetReport answers, three per report over one window: the totals (headline and verdict), the rows
grouped as asked (the table), and the totals per time bucket (the charts). The HTML is one self-contained file:
inline CSS and inline SVG charts, no script and no external address, so it opens anywhere, offline, and can be
mailed as it is. Charts need matplotlib (`pip install 'nextbest[report]'`); the JSON does not.
"""

from __future__ import annotations

import html
import importlib.util
import io
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from google.protobuf import json_format
from nextbest.decision.v1 import decision_service_pb2 as decision_pb

from cli.report import interval_text, length_text, row_key

#: Up to this window the series is hourly, beyond it daily (a day of hours or a week of days reads well).
HOURLY_UP_TO = timedelta(days=2)

GetReport = Callable[[decision_pb.GetReportRequest], Awaitable[decision_pb.GetReportResponse | None]]


@dataclass(frozen=True)
class Report:
    """The three answers a file report is built from."""

    totals: decision_pb.GetReportResponse
    grouped: decision_pb.GetReportResponse
    series: decision_pb.GetReportResponse
    by: list[str]
    bucket_width: timedelta

    @property
    def total(self) -> decision_pb.ReportRow | None:
        return self.totals.rows[0] if self.totals.rows else None


async def collect(
    get_report: GetReport, request: decision_pb.GetReportRequest, by: list[str], bucket_width: timedelta | None
) -> Report | None:
    """Ask for the totals, the grouped rows and the series over the request's window (which must have an end, so
    the three answers count the same decisions); None when a call failed (the caller has reported it)."""
    totals_request = decision_pb.GetReportRequest()
    totals_request.CopyFrom(request)
    del totals_request.group_by[:]
    window = request.end_time.ToDatetime() - request.start_time.ToDatetime()
    width = bucket_width or (timedelta(hours=1) if window <= HOURLY_UP_TO else timedelta(days=1))
    series_request = decision_pb.GetReportRequest()
    series_request.CopyFrom(totals_request)
    series_request.bucket_width.FromTimedelta(width)
    totals = await get_report(totals_request)
    grouped = await get_report(request) if by and totals is not None else totals
    series = await get_report(series_request) if grouped is not None else None
    if totals is None or grouped is None or series is None:
        return None
    return Report(totals, grouped, series, by, width)


def verdict(estimate: decision_pb.Estimate) -> str:
    """Plain language for a difference's 95% interval."""
    if estimate.low > 0:
        return "better"
    if estimate.high < 0:
        return "worse"
    return "not yet significant"


def _dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def to_json(report: Report) -> str:
    """Everything the HTML shows, machine-readable: the grouped reply's fields (as `--json` always printed), plus
    the totals, the verdicts and the time series."""
    total = report.total
    uplift = total.uplift if total is not None and total.HasField("uplift") else None
    document = {
        **_dict(report.grouped),
        "group_by": report.by,
        "totals": _dict(total) if total is not None else None,
        "verdict": {
            "acceptance": verdict(uplift.acceptance),
            "revenue_per_decision": verdict(uplift.revenue_per_decision),
        } if uplift is not None else None,
        "bucket_width_seconds": int(report.bucket_width.total_seconds()),
        "attribution_window_seconds": report.totals.attribution_window.ToTimedelta().total_seconds(),
        "series": [_dict(row) for row in report.series.rows],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()


# --- HTML ------------------------------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2733; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.window { color: #5b6673; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8rem; }
.card { border: 1px solid #d8dee6; border-radius: 8px; padding: 0.7rem 1rem; min-width: 12rem; flex: 1; }
.card .label { color: #5b6673; font-size: 0.85rem; } .card .value { font-size: 1.5rem; font-weight: 600; }
.card .ci { color: #5b6673; font-size: 0.8rem; }
.verdict { border-left: 5px solid #8a95a3; background: #f4f6f8; padding: 0.7rem 1rem; margin: 1rem 0; }
.verdict.better { border-color: #1a7f37; } .verdict.worse { border-color: #c62828; }
table { border-collapse: collapse; font-size: 0.85rem; width: 100%; }
th, td { border-bottom: 1px solid #e3e7ec; padding: 0.3rem 0.5rem; text-align: right; white-space: nowrap; }
th { background: #f4f6f8; } td.key, th.key { text-align: left; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 1rem; }
.charts figure { margin: 0; } .charts svg { width: 100%; height: auto; }
.note { color: #5b6673; font-size: 0.85rem; }
"""


def _percent(value: float) -> str:
    return f"{value:.1%}"


def _points(value: float) -> str:
    return f"{value * 100:+.1f}"


def _bound(value: float, show: Callable[[float], str]) -> str:
    return ("-∞" if value < 0 else "+∞") if math.isinf(value) else show(value)


def _card(label: str, value: str, ci: str = "") -> str:
    ci_html = f'<div class="ci">{html.escape(ci)}</div>' if ci else ""
    return (f'<div class="card"><div class="label">{html.escape(label)}</div>'
            f'<div class="value">{html.escape(value)}</div>{ci_html}</div>')


def _headline(total: decision_pb.ReportRow) -> str:
    rate, rpd = total.acceptance_rate, total.revenue_per_decision
    cards = [
        _card("Decisions", f"{total.decisions:,}", f"{total.customers:,} customers"),
        _card("Acceptance rate", _percent(rate.value),
              f"95% CI {_bound(rate.low, _percent)} to {_bound(rate.high, _percent)}"),
        _card("Revenue per decision", f"{rpd.value:,.2f}",
              f"95% CI {_bound(rpd.low, '{:,.2f}'.format)} to {_bound(rpd.high, '{:,.2f}'.format)}"),
        _card("Revenue", f"{total.revenue:,.2f}", f"{total.accepts:,} accepted, {total.purchases:,} purchases"),
        _card("Degraded decisions", _percent(total.degraded / total.decisions), f"{total.degraded:,} fell back"),
    ]
    if total.HasField("latency"):
        latency = total.latency
        cards.append(_card("Decision latency p95", f"{latency.p95_ms:,.0f} ms",
                           f"p50 {latency.p50_ms:,.0f} ms, p99 {latency.p99_ms:,.0f} ms"))
    return f'<div class="cards">{"".join(cards)}</div>'


def _verdicts(total: decision_pb.ReportRow) -> str:
    if not total.HasField("uplift"):
        return ('<div class="verdict"><strong>Uplift: not measurable.</strong> The window has no control group '
                "decisions (or no treatment ones), so targeted offers cannot be compared with random ones.</div>")
    uplift = total.uplift
    acceptance, revenue = uplift.acceptance, uplift.revenue_per_decision
    money = "{:+,.2f}".format
    sentences = [
        (verdict(acceptance),
         f"Targeted offers are accepted {abs(acceptance.value) * 100:.1f} percentage points "
         f"{'less' if acceptance.value < 0 else 'more'} often than random ones (95% CI "
         f"{_bound(acceptance.low, _points)} to {_bound(acceptance.high, _points)} points)."),
        (verdict(revenue),
         f"Targeted offers earn {abs(revenue.value):,.2f} {'less' if revenue.value < 0 else 'more'} per decision "
         f"than random ones (95% CI {_bound(revenue.low, money)} to {_bound(revenue.high, money)})."),
    ]
    caution = " Fewer decisions than the minimum sample: read with care." if total.below_min_sample else ""
    return "".join(
        f'<div class="verdict {word.replace(" ", "-")}"><strong>{html.escape(word.capitalize())}.</strong> '
        f"{html.escape(text)} Based on {uplift.treatment_decisions:,} targeted and {uplift.control_decisions:,} "
        f"control decisions.{caution}</div>"
        for word, text in sentences
    )


def _table(report: Report) -> str:
    by = report.by or ["all"]
    header = [*by, "decisions", "customers", "accepts", "acceptance (95% CI)", "revenue", "revenue / decision (95% CI)",
              "uplift acceptance (95% CI)", "uplift revenue / decision (95% CI)", "degraded", "latency p95"]
    lines = ["<tr>" + "".join(
        f'<th class="key">{html.escape(name)}</th>' if i < len(by) else f"<th>{html.escape(name)}</th>"
        for i, name in enumerate(header)
    ) + "</tr>"]
    for row in report.grouped.rows:
        uplift = row.uplift if row.HasField("uplift") else None
        keys = row_key(row, report.by) if report.by else ["all"]
        cells = [
            f"{row.decisions:,}{'*' if row.below_min_sample else ''}", f"{row.customers:,}", f"{row.accepts:,}",
            interval_text(row.acceptance_rate, percent=True), f"{row.revenue:,.2f}",
            interval_text(row.revenue_per_decision, percent=False),
            interval_text(uplift.acceptance, percent=True) if uplift else "-",
            interval_text(uplift.revenue_per_decision, percent=False) if uplift else "-",
            f"{row.degraded:,}", f"{row.latency.p95_ms:,.0f} ms" if row.HasField("latency") else "-",
        ]
        lines.append("<tr>" + "".join(f'<td class="key">{html.escape(k)}</td>' for k in keys)
                     + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    note = ""
    if any(row.below_min_sample for row in report.grouped.rows):
        note = (f'<p class="note">* fewer than {report.grouped.min_sample} decisions in the row (or in its smaller '
                "arm): read with care.</p>")
    return f"<table>{''.join(lines)}</table>{note}"


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.nan  # an unbounded interval leaves a gap, not an infinite band


def _svg(figure) -> str:
    """The figure as inline SVG: text stays text, and nothing names an outside address (no DOCTYPE, metadata or
    namespace declarations, which inline SVG in HTML does not need)."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)
    return re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", text)


Line = tuple[str, Sequence[float], Sequence[float] | None, Sequence[float] | None]  # label, values, lows, highs


def _chart(title: str, times: Sequence[datetime], lines: Sequence[Line], percent: bool, zero_line: bool = False) -> str:
    import matplotlib
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    figure = Figure(figsize=(6.4, 3.0))
    axes = figure.add_subplot()
    for label, values, lows, highs in lines:
        (drawn,) = axes.plot(times, values, marker="o", markersize=3, label=label)
        if lows is not None and highs is not None:
            axes.fill_between(times, [_finite(v) for v in lows], [_finite(v) for v in highs],
                              color=drawn.get_color(), alpha=0.15, linewidth=0, label=f"{label}, 95% CI")
    if zero_line:
        axes.axhline(0, color="#5b6673", linewidth=0.8)
    if percent:
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.set_title(title, fontsize=11, loc="left")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    # Text stays text (searchable, small); a salt per chart keeps element ids unique within the page and stable.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"nextbest-{title}"}):
        return f"<figure>{_svg(figure)}</figure>"


def _charts(report: Report) -> str:
    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("the HTML report draws its charts with matplotlib: pip install 'nextbest[report]'")
    rows = list(report.series.rows)
    if not rows:
        return '<p class="note">No decisions in the window: nothing to chart.</p>'
    # Each point sits in the middle of its bucket.
    half = report.bucket_width / 2
    times = [row.key.bucket_start.ToDatetime(tzinfo=UTC) + half for row in rows]
    charts = [_chart("Acceptance rate", times, [(
        "acceptance", [r.acceptance_rate.value for r in rows], [r.acceptance_rate.low for r in rows],
        [r.acceptance_rate.high for r in rows])], percent=True)]
    with_uplift = [(t, r) for t, r in zip(times, rows, strict=True) if r.HasField("uplift")]
    if with_uplift:
        charts.append(_chart("Uplift in acceptance: targeted minus control", [t for t, _ in with_uplift], [(
            "uplift", [r.uplift.acceptance.value for _, r in with_uplift],
            [r.uplift.acceptance.low for _, r in with_uplift], [r.uplift.acceptance.high for _, r in with_uplift],
        )], percent=True, zero_line=True))
    charts.append(_chart("Degraded decisions (a dependency slow or down)", times, [
        ("degraded rate", [r.degraded / r.decisions for r in rows], None, None)], percent=True))
    timed = [(t, r.latency) for t, r in zip(times, rows, strict=True) if r.HasField("latency")]
    if timed:
        charts.append(_chart("Decision latency (ms)", [t for t, _ in timed], [
            (name, [getattr(latency, f"{name}_ms") for _, latency in timed], None, None)
            for name in ("p50", "p95", "p99")
        ], percent=False))
    notes = []
    if not with_uplift:
        notes.append("No time bucket has both targeted and control decisions: no uplift chart.")
    if not timed:
        notes.append("No decision in the window has a recorded latency: no latency chart.")
    return (f'<div class="charts">{"".join(charts)}</div>'
            + "".join(f'<p class="note">{html.escape(note)}</p>' for note in notes))


def _per(width: timedelta) -> str:
    """ "per hour", "per 15 minutes", "per day"."""
    for unit, size in (("day", timedelta(days=1)), ("hour", timedelta(hours=1)), ("minute", timedelta(minutes=1))):
        if width >= size:
            count = width / size
            return f"per {unit}" if count == 1 else f"per {count:g} {unit}s"
    return f"per {width.total_seconds():g} seconds"


def render_html(report: Report) -> str:
    """The whole report as one self-contained HTML page."""
    start, end = (ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC")
                  for ts in (report.totals.start_time, report.totals.end_time))
    bucket = _per(report.bucket_width)
    total = report.total
    if total is None:
        body = '<p class="note">No decisions in the window.</p>'
    else:
        body = (
            f"<h2>Headline</h2>{_headline(total)}{_verdicts(total)}"
            f"<h2>Over time ({bucket}, UTC)</h2>{_charts(report)}"
            f"<h2>{html.escape('By ' + ', '.join(report.by) if report.by else 'Totals')}</h2>{_table(report)}"
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>NextBest report {html.escape(start)} to {html.escape(end)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>Next-best-offer report</h1>
<p class="window">Decisions from {html.escape(start)} to {html.escape(end)}; outcomes count when they happened
within {html.escape(length_text(report.totals.attribution_window.ToTimedelta()))} of the decision. Uplift compares
targeted offers with the random control group; intervals are 95%.</p>
{body}
</body>
</html>
"""
