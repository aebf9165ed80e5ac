"""Learning from the decision log: training sets from decisions joined to outcomes, and per-version comparisons.

Pure functions over plain records (no SQL, no gRPC): `services.scoring.offline` reads the decision service's log
into `LoggedDecision` / `LoggedOutcome` records.

No-leakage rules of `build_training_set` (each has a unit test):
- features come only from the decision itself: the customer-feature snapshot stored with the decision and the offer
  features recomputed from the logged request context — never from the profile as it is now;
- an outcome counts only if it happened within the attribution window after the decision
  (decided_at <= occurred_at <= decided_at + window) and was recorded by the training cut-off (`as_of`);
- a decision whose window has not closed by `as_of` is left out (its label is not known yet, and counting it as a
  decline would teach the model that recent offers fail);
- only offers the decision actually showed become rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from libs.stats import Z_95, mean_interval, wilson_interval  # noqa: F401 - re-exported (one place for statistics)

#: Outcome types that mean the customer took the offer.
POSITIVE_OUTCOMES = frozenset({"accept", "purchase"})


@dataclass(frozen=True, slots=True)
class ShownOffer:
    offer_id: str
    propensity: float  # what the decision believed, for calibration


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    decision_id: str
    customer_id: str
    decided_at: datetime
    model_version: str
    offers: tuple[ShownOffer, ...]
    #: The customer's feature vector as scored at decision time; None when the log did not store it.
    customer_features: Mapping[str, float] | None = None
    #: The request context the offer features are computed from (channel, sku, dwell, cart).
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoggedOutcome:
    decision_id: str
    offer_id: str
    type: str
    occurred_at: datetime
    recorded_at: datetime
    revenue: float = 0.0


@dataclass(frozen=True)
class TrainingSet:
    rows: list[dict[str, float]]
    labels: list[int]
    times: list[datetime]
    keys: list[tuple[str, str]]  # (decision_id, offer_id)
    skipped: dict[str, int]

    @property
    def window(self) -> tuple[datetime, datetime] | None:
        return (min(self.times), max(self.times)) if self.times else None


OfferFeatures = Callable[[LoggedDecision, str], Mapping[str, float] | None]


def _counts_as_accepted(outcome: LoggedOutcome, decision: LoggedDecision, window: timedelta, as_of: datetime) -> bool:
    return (
        outcome.type in POSITIVE_OUTCOMES
        and decision.decided_at <= outcome.occurred_at <= decision.decided_at + window
        and outcome.recorded_at <= as_of
    )


def accepted_offers(
    decisions: Sequence[LoggedDecision], outcomes: Sequence[LoggedOutcome], window: timedelta, as_of: datetime
) -> tuple[dict[tuple[str, str], bool], dict[str, float]]:
    """(decision, offer) pairs accepted within the window, and each decision's attributed revenue."""
    by_id = {d.decision_id: d for d in decisions}
    accepted: dict[tuple[str, str], bool] = {}
    revenue: dict[str, float] = defaultdict(float)
    for outcome in outcomes:
        decision = by_id.get(outcome.decision_id)
        if decision is None or not _counts_as_accepted(outcome, decision, window, as_of):
            continue
        accepted[(outcome.decision_id, outcome.offer_id)] = True
        revenue[outcome.decision_id] += outcome.revenue
    return accepted, revenue


def build_training_set(
    decisions: Sequence[LoggedDecision],
    outcomes: Sequence[LoggedOutcome],
    *,
    window: timedelta,
    as_of: datetime,
    offer_features: OfferFeatures,
) -> TrainingSet:
    """One row per offer shown by a decision whose attribution window closed by `as_of` (see the module rules)."""
    if window <= timedelta(0):
        raise ValueError("the attribution window must be positive")
    accepted, _ = accepted_offers(decisions, outcomes, window, as_of)
    rows: list[dict[str, float]] = []
    labels: list[int] = []
    times: list[datetime] = []
    keys: list[tuple[str, str]] = []
    skipped: dict[str, int] = defaultdict(int)
    for decision in decisions:
        if decision.decided_at + window > as_of:
            skipped["window_still_open"] += 1
            continue
        if decision.customer_features is None:
            skipped["no_feature_snapshot"] += 1
            continue
        for shown in decision.offers:
            features = offer_features(decision, shown.offer_id)
            if features is None:
                skipped["offer_not_in_catalogue"] += 1
                continue
            rows.append({**decision.customer_features, **features})
            labels.append(int(accepted.get((decision.decision_id, shown.offer_id), False)))
            times.append(decision.decided_at)
            keys.append((decision.decision_id, shown.offer_id))
    return TrainingSet(rows, labels, times, keys, dict(skipped))


# --------------------------------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class VersionReport:
    """How one model version's decisions did."""

    model_version: str
    decisions: int
    accepted_decisions: int
    acceptance: tuple[float, float, float]  # rate, low, high
    revenue_per_decision: tuple[float, float, float]  # mean, low, high
    offers_shown: int
    mean_predicted: float
    observed_offer_rate: tuple[float, float, float]  # rate, low, high

    @property
    def calibration_ratio(self) -> float:
        """Observed over predicted acceptance of shown offers (1 is calibrated)."""
        return self.observed_offer_rate[0] / self.mean_predicted if self.mean_predicted else math.nan


def compare_versions(
    decisions: Sequence[LoggedDecision], outcomes: Sequence[LoggedOutcome], *, window: timedelta, as_of: datetime
) -> list[VersionReport]:
    """Acceptance, revenue per decision and calibration per model version, over decisions whose window closed."""
    closed = [d for d in decisions if d.decided_at + window <= as_of and d.offers]
    accepted, revenue = accepted_offers(closed, outcomes, window, as_of)
    by_version: dict[str, list[LoggedDecision]] = defaultdict(list)
    for decision in closed:
        by_version[decision.model_version or "(rules only)"].append(decision)
    reports = []
    for version, group in sorted(by_version.items()):
        took = [any(accepted.get((d.decision_id, o.offer_id)) for o in d.offers) for d in group]
        shown = [(d, o) for d in group for o in d.offers]
        hits = sum(1 for d, o in shown if accepted.get((d.decision_id, o.offer_id)))
        acceptance_rate = sum(took) / len(group)
        offer_rate = hits / len(shown)
        reports.append(VersionReport(
            model_version=version,
            decisions=len(group),
            accepted_decisions=sum(took),
            acceptance=(acceptance_rate, *wilson_interval(sum(took), len(group))),
            revenue_per_decision=mean_interval([revenue.get(d.decision_id, 0.0) for d in group]),
            offers_shown=len(shown),
            mean_predicted=sum(o.propensity for _, o in shown) / len(shown),
            observed_offer_rate=(offer_rate, *wilson_interval(hits, len(shown))),
        ))
    return reports
