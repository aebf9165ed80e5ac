"""The measurement report: acceptance, revenue and uplift of treatment over the random control group, per group.

Pure: the storage adapter aggregates the decision log in SQL into one `GroupTotals` per group (counts and sums per
arm), and `report_rows` turns them into rates, intervals and uplift. Definitions (also in the contract):

- the unit is a decision, or a showing of an offer when the report is per offer (grouped by offer or filtered by
  offer id); a unit is in the window by its decision time, and all its outcomes count whenever they arrived;
- a unit is accepted when it has an accept or a purchase outcome (as `nextbest model compare` counts it);
- revenue is the sum of the unit's outcome values; revenue per decision is its mean over units, zeros included;
- uplift is treatment minus control within the same group: acceptance rates (Newcombe interval) and revenue per
  decision (Welch interval). Control customers get a random eligible offer or none, so this is what arbitration
  adds over no targeting for the same kind of decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from libs.stats import Moments, proportion_difference, welch_difference, wilson_interval

#: The dimensions a report can be grouped by, in the contract's order.
DIMENSIONS = ("offer", "channel", "segment", "model_version", "arm", "catalogue_version")
#: Outcome types that mean the customer took the offer.
ACCEPTED_OUTCOMES = ("accept", "purchase")
#: Arms with fewer units than this are flagged when the request names no threshold.
DEFAULT_MIN_SAMPLE = 100

Interval = tuple[float, float, float]  # estimate, low, high


@dataclass(frozen=True)
class ReportQuery:
    start: datetime
    end: datetime
    group_by: tuple[str, ...] = ()
    channel: str = ""  # empty: every channel
    offer_id: str = ""  # empty: every offer
    min_sample: int = DEFAULT_MIN_SAMPLE

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
    """What SQL aggregates for one group: `key` maps each grouped dimension to its value."""

    key: Mapping[str, str]
    customers: int
    impressions: int
    clicks: int
    purchases: int
    treatment: ArmTotals
    control: ArmTotals


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


def report_rows(groups: Sequence[GroupTotals], min_sample: int) -> list[ReportRow]:
    """Rates, intervals and uplift for each group, ordered by key."""
    return [_row(group, min_sample) for group in sorted(groups, key=lambda g: tuple(g.key.values()))]


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
    )
