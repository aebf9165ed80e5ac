"""The decision service's business metrics: decisions, offers shown and outcomes, degraded answers, cache hit rates.

Every attribute is bounded: channels, offer ids (the catalogue), outcome types, degraded and no-offer reason codes,
cache names. Customer ids never become attributes. With metrics off the meter is a no-op (`libs.metrics.meter`).
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeter, Observation

from libs.customer_cache import CustomerCache
from services.decision.domain.model import Decision


class DecisionMetrics:
    """Counts what `DecisionService` decided and recorded; observes the customer caches' hit and miss counters."""

    def __init__(self, meter: Meter | None = None, caches: Iterable[CustomerCache] = ()) -> None:
        meter = meter or NoOpMeter("nextbest.decision")
        self._decisions = meter.create_counter(
            "nextbest.decision.decisions", unit="{decision}", description="Decisions made, per channel and arm."
        )
        self._offers = meter.create_counter(
            "nextbest.decision.offers", unit="{offer}", description="Offers returned, per offer and channel."
        )
        self._no_offer = meter.create_counter(
            "nextbest.decision.no_offer",
            unit="{decision}",
            description="Decisions that returned no offer, per channel and reason.",
        )
        self._degraded = meter.create_counter(
            "nextbest.decision.degraded",
            unit="{decision}",
            description="Degraded decisions, per degraded reason (a decision may count under several reasons).",
        )
        self._outcomes = meter.create_counter(
            "nextbest.decision.outcomes", unit="{outcome}", description="Outcomes recorded, per offer, channel and type."
        )
        self._caches = tuple(caches)
        if self._caches:
            meter.create_observable_counter(
                "nextbest.decision.cache.lookups",
                callbacks=[self._observe_caches],
                unit="{lookup}",
                description="Customer cache look-ups, per cache and result (hit or miss).",
            )

    def decided(self, decision: Decision) -> None:
        channel = decision.channel
        self._decisions.add(1, {"channel": channel, "arm": decision.arm, "degraded": decision.degraded})
        for offer in decision.offers:
            self._offers.add(1, {"offer_id": offer.offer_id, "channel": channel})
        if not decision.offers:
            self._no_offer.add(1, {"channel": channel, "reason": decision.no_offer_reason or "unspecified"})
        for reason in decision.degraded_reasons:
            self._degraded.add(1, {"channel": channel, "reason": reason})

    def outcome(self, offer_id: str, channel: str, outcome_type: str) -> None:
        self._outcomes.add(1, {"offer_id": offer_id, "channel": channel, "type": outcome_type})

    def _observe_caches(self, options: CallbackOptions) -> Iterable[Observation]:
        for cache in self._caches:
            yield Observation(cache.stats.hits, {"cache": cache.name, "result": "hit"})
            yield Observation(cache.stats.misses, {"cache": cache.name, "result": "miss"})
