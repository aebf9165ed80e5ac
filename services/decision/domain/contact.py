"""Contact policies: how often one customer may see an offer, cool-down after a decline, suppression after ignores.

Pure: the orchestrator reads the customer's recent history (one indexed query of their decisions in the look-back
window, joined to those decisions' outcomes) and `blocked` says which offers the history rules out.

- An impression is a decision on the channel that returned the offer (what the customer was shown); the day and
  week caps are rolling 24-hour and 7-day windows, counted per channel.
- A decline of the offer (any channel) keeps it away for `decline_cooldown_days`.
- An ignore is a decision that returned the offer at least `ignore_after` ago and got no click, accept, decline or
  purchase for it; `max_ignores` ignores in the look-back window suppress the offer until the window moves on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.decision.catalogue import Catalogue, Offer

DAY = timedelta(days=1)
WEEK = timedelta(days=7)
RESPONSES = frozenset({"click", "accept", "decline", "purchase"})


@dataclass(frozen=True)
class Shown:
    """One offer returned by one past decision, with what the customer did about it."""

    offer_id: str
    channel: str
    shown_at: datetime
    #: Outcome types recorded for this offer of this decision, with when they happened.
    outcomes: tuple[tuple[str, datetime], ...] = ()


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
    offers: Iterable[Offer], channel: str, history: Iterable[Shown], now: datetime, ignore_after: timedelta
) -> dict[str, tuple[str, str]]:
    """Offer id -> (trace code, why) for every offer its contact policy rules out now."""
    by_offer: dict[str, list[Shown]] = {}
    for shown in history:
        by_offer.setdefault(shown.offer_id, []).append(shown)
    result: dict[str, tuple[str, str]] = {}
    for offer in offers:
        policy = offer.contact
        past = by_offer.get(offer.id)
        if policy is None or not past:
            continue
        here = [s for s in past if s.channel == channel]
        if policy.max_per_day is not None:
            today = sum(1 for s in here if now - s.shown_at < DAY)
            if today >= policy.max_per_day:
                result[offer.id] = ("contact_daily_cap", f"shown {today} times on {channel} in 24 h (cap {policy.max_per_day})")
                continue
        if policy.max_per_week is not None:
            week = sum(1 for s in here if now - s.shown_at < WEEK)
            if week >= policy.max_per_week:
                result[offer.id] = ("contact_weekly_cap", f"shown {week} times on {channel} in 7 days (cap {policy.max_per_week})")
                continue
        if policy.decline_cooldown_days is not None:
            cooldown = timedelta(days=policy.decline_cooldown_days)
            declines = [at for s in past for kind, at in s.outcomes if kind == "decline" and now - at < cooldown]
            if declines:
                result[offer.id] = (
                    "decline_cooldown",
                    f"declined at {max(declines).isoformat()}; cool-down {policy.decline_cooldown_days:g} days",
                )
                continue
        if policy.max_ignores is not None:
            ignored = sum(
                1
                for s in past
                if now - s.shown_at >= ignore_after
                and now - s.shown_at < WEEK
                and not any(kind in RESPONSES for kind, _ in s.outcomes)
            )
            if ignored >= policy.max_ignores:
                result[offer.id] = ("ignored_too_often", f"ignored {ignored} times in 7 days (limit {policy.max_ignores})")
    return result
