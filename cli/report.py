"""`nextbest report`: acceptance, revenue and uplift over the control group from the decision service's GetReport.

    nextbest report --since 7d --by offer,channel
    nextbest report --since 2026-11-01T00:00:00Z --until 2026-11-08T00:00:00Z --by segment --channel web --json
    nextbest report --since 7d --by offer --html report.html --json report.json
    nextbest report --since 30d --attribution-window 1d

Outcomes count towards a decision only within the attribution window after it (default: the service's
NEXTBEST_DECISION_ATTRIBUTION_WINDOW_SECONDS, 7 days); the window applied is printed and in the HTML and JSON.

The table is one GetReport call. --html and --json add the totals and a time series (cli/report_html.py).
"""

from __future__ import annotations

import argparse
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nextbest.decision.v1 import decision_service_pb2 as decision_pb

from cli.client import CHANNELS, _call, _exit, common_options
from libs.protoconv import to_timestamp, utcnow

DIMENSIONS = {
    name.removeprefix("REPORT_DIMENSION_").lower(): number
    for name, number in decision_pb.ReportDimension.items()
    if number
}
CHANNEL_NAMES = {number: name for name, number in CHANNELS.items()}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def point_in_time(text: str, now: datetime) -> datetime:
    """An age before now ("90m", "12h", "7d", "2w") or an ISO-8601 time (UTC when it names no zone)."""
    if match := _AGE.fullmatch(text.strip()):
        return now - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: neither an age like 7d nor an ISO-8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def moment(text: str) -> datetime:
    return point_in_time(text, utcnow())


def dimensions(text: str) -> list[str]:
    names = [name.strip().replace("-", "_") for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DIMENSIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown dimension {', '.join(unknown)} (one of {', '.join(DIMENSIONS)})")
    return names


def width(text: str) -> timedelta:
    """A time bucket width such as "15m", "1h" or "1d"."""
    if match := _AGE.fullmatch(text.strip()):
        return timedelta(**{_UNITS[match[2]]: float(match[1])})
    raise argparse.ArgumentTypeError(f"{text!r}: not a width like 1h or 1d")


def window_length(text: str) -> timedelta:
    """An attribution window: a length like "90m", "12h", "7d", "2w", or a number of seconds."""
    try:
        length = width(text)
    except argparse.ArgumentTypeError:
        try:
            length = timedelta(seconds=float(text))
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r}: not a length like 7d or a number of seconds") from None
    if length <= timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
    return length


def length_text(length: timedelta) -> str:
    """ "7 days", "1 hour", "90 minutes", "45 seconds": the largest unit that divides the length."""
    seconds = length.total_seconds()
    for unit, size in (("week", 604_800), ("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


def interval_text(estimate: decision_pb.Estimate, percent: bool) -> str:
    def show(value: float) -> str:
        if math.isinf(value):
            return "-inf" if value < 0 else "+inf"
        return f"{value:.1%}" if percent else f"{value:.2f}"

    return f"{show(estimate.value)} [{show(estimate.low)}, {show(estimate.high)}]"


def row_key(row: decision_pb.ReportRow, by: list[str]) -> list[str]:
    values = {
        "offer": row.key.offer_id,
        "channel": CHANNEL_NAMES.get(row.key.channel, ""),
        "segment": row.key.segment or "(none)",
        "model_version": row.key.model_version or "(rules)",
        "arm": row.key.arm,
        "catalogue_version": row.key.catalogue_version,
    }
    return [values[name] for name in by]


def format_report(reply: decision_pb.GetReportResponse, by: list[str]) -> str:
    """A fixed-width table; uplift columns are treatment minus control in the same row."""
    start, end = (ts.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds") for ts in (reply.start_time, reply.end_time))
    window = length_text(reply.attribution_window.ToTimedelta())
    lines = [f"decisions from {start} to {end}; outcomes counted within {window} of each decision"]
    if not reply.rows:
        return "\n".join([*lines, "no decisions in the window"])
    header = [*by, "decisions", "customers", "accepts", "acceptance (95% CI)", "revenue", "revenue/decision (95% CI)",
              "uplift acceptance (95% CI)", "uplift revenue/decision (95% CI)", "treatment/control"]
    table = [header]
    for row in reply.rows:
        uplift = row.uplift if row.HasField("uplift") else None
        table.append([
            *row_key(row, by),
            f"{row.decisions}{'*' if row.below_min_sample else ''}",
            str(row.customers),
            str(row.accepts),
            interval_text(row.acceptance_rate, percent=True),
            f"{row.revenue:.2f}",
            interval_text(row.revenue_per_decision, percent=False),
            interval_text(uplift.acceptance, percent=True) if uplift else "-",
            interval_text(uplift.revenue_per_decision, percent=False) if uplift else "-",
            f"{uplift.treatment_decisions}/{uplift.control_decisions}" if uplift else "-",
        ])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    numeric_from = len(by)
    for line in table:
        lines.append("  ".join(
            cell.ljust(width) if i < numeric_from else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip())
    if any(row.below_min_sample for row in reply.rows):
        lines.append(f"* fewer than {reply.min_sample} decisions in the row (or in its smaller arm): read with care")
    return "\n".join(lines)


async def cmd_report(args: argparse.Namespace) -> int:
    request = decision_pb.GetReportRequest(
        start_time=to_timestamp(args.since),
        # One end for every call of a file report, so its totals, rows and time series cover the same decisions.
        end_time=to_timestamp(args.until or utcnow()),
        group_by=[DIMENSIONS[name] for name in args.by],
        channel=CHANNELS[args.channel] if args.channel else 0,
        offer_id=args.offer or "",
        min_sample=args.min_sample,
    )
    if args.attribution_window is not None:
        request.attribution_window.FromTimedelta(args.attribution_window)
    if args.html is None and args.json_to is None:
        reply = await _call(args, "decision", "GetReport", request)
        if reply is not None:
            print(format_report(reply, args.by))
        return _exit(reply)

    from cli.report_html import collect, render_html, to_json  # only file reports need it (and matplotlib)

    async def get_report(one: decision_pb.GetReportRequest) -> decision_pb.GetReportResponse | None:
        return await _call(args, "decision", "GetReport", one)

    report = await collect(get_report, request, args.by, args.bucket)
    if report is None:
        return 1
    if args.json_to == "-":
        print(to_json(report))
    elif args.json_to is not None:
        Path(args.json_to).write_text(to_json(report) + "\n", encoding="utf-8")
    if args.html is not None:
        Path(args.html).write_text(render_html(report), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", parents=[common_options(timeout=30.0)], conflict_handler="resolve",  # --json takes a FILE here
        help="acceptance, revenue and uplift over the control group, per offer, channel, segment, model version",
    )
    p.add_argument("--since", type=moment, default="7d", help="window start: an age (90m, 12h, 7d, 2w) or ISO-8601 (default 7d)")
    p.add_argument("--until", type=moment, help="window end: an age or ISO-8601 (default now)")
    p.add_argument("--by", type=dimensions, default=[], metavar="DIM[,DIM]",
                   help=f"group by any of {', '.join(DIMENSIONS)} (default: one row of totals)")
    p.add_argument("--channel", choices=CHANNELS, help="only this channel's decisions")
    p.add_argument("--offer", help="only showings of this offer")
    p.add_argument("--min-sample", type=int, default=0,
                   help="flag rows (or arms) with fewer decisions than this (default: the service's 100)")
    p.add_argument("--attribution-window", type=window_length, metavar="LENGTH",
                   help="count an outcome only within this long after its decision: 12h, 7d, or seconds "
                   "(default: the service's NEXTBEST_DECISION_ATTRIBUTION_WINDOW_SECONDS)")
    p.add_argument("--html", metavar="FILE",
                   help="write a self-contained HTML report (headline, verdict, table, charts over time) to FILE")
    p.add_argument("--json", nargs="?", const="-", dest="json_to", metavar="FILE",
                   help="the report as JSON (rows, totals, time series) to FILE, or to stdout without one")
    p.add_argument("--bucket", type=width, metavar="WIDTH",
                   help="time bucket of the charts and series, e.g. 15m, 1h, 1d (default: 1h up to 2 days, else 1d)")
    # The table and file reports print their own output, never the raw reply.
    p.set_defaults(func=cmd_report, json=False)
