"""Explain: a logged decision's trace, read back into typed entries (pure; the row comes from the decision log)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ConsideredOffer:
    offer_id: str
    fate: str  # "removed", "dropped" or "ranked"
    removed_by: str = ""
    stage: str = ""
    why: str = ""
    propensity: float = 0.0
    propensity_source: str = ""
    value: float = 0.0
    lever: float = 0.0
    context_weight: float = 0.0
    factors: tuple[str, ...] = ()
    score: float = 0.0
    rank: int = 0
    probability: float = 0.0
    value_factor: float = 0.0
    value_factor_source: str = ""


@dataclass(frozen=True)
class Explanation:
    decision_id: str
    customer_id: str
    channel: str
    decided_at: datetime
    catalogue_version: str
    model_version: str
    degraded_reasons: tuple[str, ...]
    considered: tuple[ConsideredOffer, ...]
    min_priority: float
    no_offer_reason: str
    arm: str


def considered_offer(entry: Mapping[str, Any]) -> ConsideredOffer:
    if "removed" in entry:
        return ConsideredOffer(
            offer_id=entry["offer_id"],
            fate="removed",
            removed_by=entry["removed"],
            stage=entry.get("stage", ""),
            why=entry.get("why", ""),
        )
    return ConsideredOffer(
        offer_id=entry["offer_id"],
        fate="ranked" if "rank" in entry else "dropped",
        removed_by=entry.get("dropped", ""),
        why=entry.get("why", ""),  # a buy-now: why the offer was kept for this customer
        propensity=float(entry.get("propensity", 0.0)),
        propensity_source=entry.get("source", ""),
        value=float(entry.get("value", 0.0)),
        lever=float(entry.get("lever", 0.0)),
        context_weight=float(entry.get("context_weight", 0.0)),
        factors=tuple(entry.get("factors", ())),
        score=float(entry.get("score", 0.0)),
        rank=int(entry.get("rank", 0)),
        probability=float(entry.get("probability", 1.0 if "rank" in entry else 0.0)),
        value_factor=float(entry.get("value_factor", 1.0)),  # decisions before the value factor: 1
        value_factor_source=entry.get("value_factor_source", ""),
    )


def explanation(row: Mapping[str, Any]) -> Explanation:
    """Build the explanation from a decision-log row (older rows without the newer trace keys read as defaults)."""
    trace = row["trace"] or {}
    return Explanation(
        decision_id=row["decision_id"],
        customer_id=row["customer_id"],
        channel=row["channel"],
        decided_at=row["created_at"],
        catalogue_version=row["catalogue_version"],
        model_version=row["model_version"],
        degraded_reasons=tuple(row["degraded_reasons"] or ()),
        considered=tuple(considered_offer(e) for e in trace.get("considered", ())),
        min_priority=float(trace.get("min_priority", 0.0)),
        no_offer_reason=trace.get("no_offer_reason", ""),
        arm=trace.get("arm", "treatment"),
    )
