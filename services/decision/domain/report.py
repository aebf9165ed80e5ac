"""The measurement report: acceptance, revenue and uplift of treatment over the random control group, per group.

Pure: the storage adapter aggregates the decision log in SQL into one `GroupTotals` per group (counts and sums per
arm), and `report_rows` turns them into rates, intervals and uplift. Definitions (also in the contract):

- the unit is a decision, or a showing of an offer when the report is per offer (grouped by offer or filtered by
  offer id); a unit is in the window by its decision time, and its outcomes count only when they occurred within the
  attribution window after it (decided_at <= occurred_at <= decided_at + window, the rule the trainer labels by,
  services/scoring/outcomes.py): a purchase a month later is not this decision's doing;
- a unit is accepted when it has an accept or a purchase outcome (as `nextbest model compare` counts it);
- revenue is the sum of the unit's outcome values; revenue per decision is its mean over units, zeros included;
- uplift is treatment minus control within the same group: acceptance rates (Newcombe interval) and revenue per
  decision (Welch interval). Control customers get a random eligible offer or none, so this is what arbitration
  adds over no targeting for the same kind of decision;
- with a bucket width, every group is also split by decision time (for charts over time); latency percentiles are
  read off a fixed histogram the database counts, so no latency is ever shipped row by row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from libs.stats import Moments, proportion_difference, welch_difference, wilson_interval

#: The dimensions a report can be grouped by, in the contract's order.
DIMENSIONS = ("offer", "channel", "segment", "model_version", "arm", "catalogue_version")
#: Outcome types that mean the customer took the offer.
ACCEPTED_OUTCOMES = ("accept", "purchase")
#: Arms with fewer units than this are flagged when the request names no threshold.
DEFAULT_MIN_SAMPLE = 100

#: Outcomes count towards a decision this long after it unless the request or the service says otherwise (the
#: same default as `nextbest model train --window-days`).
DEFAULT_ATTRIBUTION_WINDOW = timedelta(days=7)

#: The narrowest time bucket: finer buckets would only chart noise and multiply the rows.
MIN_BUCKET = timedelta(minutes=1)
#: Upper bounds (ms) of the latency histogram, 1-2-3-5-7 steps: a percentile is exact to within its bucket.
LATENCY_BOUNDS_MS = tuple(
    float(step * 10**power) for power in range(4) for step in (1, 2, 3, 5, 7)
) + (10_000.0,)

Interval = tuple[float, float, float]  # estimate, low, high


@dataclass(frozen=True)
class ReportQuery:
    start: datetime
    end: datetime
    group_by: tuple[str, ...] = ()
    channel: str = ""  # empty: every channel
    offer_id: str = ""  # empty: every offer
    min_sample: int = DEFAULT_MIN_SAMPLE
    bucket_width: timedelta | None = None  # None: one row per group over the whole window
    attribution_window: timedelta = DEFAULT_ATTRIBUTION_WINDOW

    @property
    def per_offer(self) -> bool:
        """Whether the unit is a showing of an offer rather than a decision."""
        return "offer" in self.group_by or bool(self.offer_id)


@dataclass(frozen=True)
class ArmTotals:
    """One arm's units, accepted units, and the sum and sum of squares of revenue per unit."""

    units: int = 0
    accepts: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0

    @property
    def revenue_moments(self) -> Moments:
        return Moments(self.units, self.revenue, self.revenue_sq)


@dataclass(frozen=True)
class GroupTotals:
    """What SQL aggregates for one group: `key` maps each grouped dimension to its value; `latency_at_most` counts
    the units whose latency is at most each of LATENCY_BOUNDS_MS, out of `latency_measured`."""

    key: Mapping[str, str]
    customers: int
    impressions: int
    clicks: int
    purchases: int
    treatment: ArmTotals
    control: ArmTotals
    bucket_start: datetime | None = None
    degraded: int = 0
    latency_measured: int = 0
    latency_at_most: tuple[int, ...] = ()


@dataclass(frozen=True)
class Latency:
    measured: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Uplift:
    treatment_units: int
    control_units: int
    acceptance: Interval
    revenue_per_decision: Interval


@dataclass(frozen=True)
class ReportRow:
    key: Mapping[str, str]
    units: int
    customers: int
    impressions: int
    clicks: int
    accepts: int
    purchases: int
    acceptance_rate: Interval
    revenue: float
    revenue_per_decision: Interval
    uplift: Uplift | None
    below_min_sample: bool
    bucket_start: datetime | None = None
    degraded: int = 0
    latency: Latency | None = None


def report_rows(groups: Sequence[GroupTotals], min_sample: int) -> list[ReportRow]:
    """Rates, intervals and uplift for each group, ordered by time bucket, then key."""
    return [
        _row(group, min_sample)
        for group in sorted(groups, key=lambda g: (g.bucket_start or datetime.min, *g.key.values()))
    ]


def histogram_quantile(quantile: float, measured: int, at_most: Sequence[int]) -> float:
    """The quantile of a histogram (counts of values at most each of LATENCY_BOUNDS_MS), interpolating linearly
    within the bucket it falls in; values beyond the last bound read as that bound."""
    rank = quantile * measured
    lower, below = 0.0, 0
    for bound, count in zip(LATENCY_BOUNDS_MS, at_most, strict=True):
        if count >= rank and count > below:
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return LATENCY_BOUNDS_MS[-1]


def _latency(group: GroupTotals) -> Latency | None:
    if not group.latency_measured:
        return None
    return Latency(
        group.latency_measured,
        *(histogram_quantile(q, group.latency_measured, group.latency_at_most) for q in (0.5, 0.95, 0.99)),
    )


def _row(group: GroupTotals, min_sample: int) -> ReportRow:
    treatment, control = group.treatment, group.control
    both = ArmTotals(
        treatment.units + control.units,
        treatment.accepts + control.accepts,
        treatment.revenue + control.revenue,
        treatment.revenue_sq + control.revenue_sq,
    )
    uplift = None
    if treatment.units and control.units:
        uplift = Uplift(
            treatment_units=treatment.units,
            control_units=control.units,
            acceptance=proportion_difference(treatment.accepts, treatment.units, control.accepts, control.units),
            revenue_per_decision=welch_difference(treatment.revenue_moments, control.revenue_moments),
        )
    # With uplift the comparison is only as good as its smaller arm.
    smallest = min(treatment.units, control.units) if uplift is not None else both.units
    rate = both.accepts / both.units if both.units else 0.0
    return ReportRow(
        key=group.key,
        units=both.units,
        customers=group.customers,
        impressions=group.impressions,
        clicks=group.clicks,
        accepts=both.accepts,
        purchases=group.purchases,
        acceptance_rate=(rate, *wilson_interval(both.accepts, both.units)),
        revenue=both.revenue,
        revenue_per_decision=both.revenue_moments.mean_interval(),
        uplift=uplift,
        below_min_sample=smallest < min_sample,
        bucket_start=group.bucket_start,
        degraded=group.degraded,
        latency=_latency(group),
    )
