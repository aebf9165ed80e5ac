"""Contact policies: how often one customer may see an offer, cool-down after a decline, suppression after ignores.

Pure: the decision log counts, for each offer with a policy, what the customer's history says about it (one
aggregate query over their decisions in the look-back window and those decisions' outcomes, `Contacts` per offer:
a customer's long history costs the database an index range, never rows shipped and decoded here) and `blocked`
says which offers the counts rule out.

- An impression is a decision on the channel that returned the offer (what the customer was shown); the day and
  week caps are rolling 24-hour and 7-day windows, counted per channel.
- A decline of the offer (any channel) keeps it away for `decline_cooldown_days`.
- An ignore is a decision that returned the offer at least `ignore_after` ago and got no click, accept, decline or
  purchase for it; `max_ignores` ignores in the look-back window suppress the offer until the window moves on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.decision.catalogue import Catalogue, Offer

DAY = timedelta(days=1)
WEEK = timedelta(days=7)
RESPONSES = frozenset({"click", "accept", "decline", "purchase"})


@dataclass(frozen=True)
class Contacts:
    """One offer in one customer's recent history, as its contact policy reads it."""

    #: Impressions on the deciding channel in the last 24 hours and in the last 7 days.
    today: int = 0
    week: int = 0
    #: Impressions on any channel in the last 7 days, at least `ignore_after` old, with no response to the offer.
    ignored: int = 0
    #: The latest decline of the offer (any channel) among the decisions in the look-back window.
    declined_at: datetime | None = None


def lookback(catalogue: Catalogue) -> timedelta | None:
    """How far back the history must go for the catalogue's policies; None when no offer has a contact policy."""
    longest: timedelta | None = None
    for offer in catalogue.offers:
        policy = offer.contact
        if policy is None:
            continue
        window = WEEK if policy.max_per_week or policy.max_ignores else DAY
        if policy.decline_cooldown_days:
            window = max(window, timedelta(days=policy.decline_cooldown_days))
        longest = window if longest is None else max(longest, window)
    return longest


def blocked(
    offers: Iterable[Offer], channel: str, history: Mapping[str, Contacts], now: datetime
) -> dict[str, tuple[str, str]]:
    """Offer id -> (trace code, why) for every offer its contact policy rules out now, given the customer's
    `history` by offer id (an offer never shown is absent)."""
    result: dict[str, tuple[str, str]] = {}
    for offer in offers:
        policy = offer.contact
        past = history.get(offer.id)
        if policy is None or past is None:
            continue
        if policy.max_per_day is not None and past.today >= policy.max_per_day:
            result[offer.id] = (
                "contact_daily_cap", f"shown {past.today} times on {channel} in 24 h (cap {policy.max_per_day})"
            )
            continue
        if policy.max_per_week is not None and past.week >= policy.max_per_week:
            result[offer.id] = (
                "contact_weekly_cap", f"shown {past.week} times on {channel} in 7 days (cap {policy.max_per_week})"
            )
            continue
        if (
            policy.decline_cooldown_days is not None
            and past.declined_at is not None
            and now - past.declined_at < timedelta(days=policy.decline_cooldown_days)
        ):
            result[offer.id] = (
                "decline_cooldown",
                f"declined at {past.declined_at.isoformat()}; cool-down {policy.decline_cooldown_days:g} days",
            )
            continue
        if policy.max_ignores is not None and past.ignored >= policy.max_ignores:
            result[offer.id] = (
                "ignored_too_often", f"ignored {past.ignored} times in 7 days (limit {policy.max_ignores})"
            )
    return result
