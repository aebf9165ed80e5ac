"""The scoring service's metrics: which model version serves each use case, observed when metrics are exported."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from services.scoring.domain import ScoringService


def observe_serving_models(meter: Meter, service: ScoringService) -> None:
    """`nextbest.scoring.model.serving`: the share of customers each loaded version serves, per use case, version
    and role (champion or challenger); a version no longer served simply stops being reported."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        for use_case, slot in service.state.slots.items():
            if slot.challenger is not None:
                version = slot.challenger.model.version
                yield Observation(slot.share, {"use_case": use_case, "version": version, "role": "challenger"})
            if slot.champion is not None:
                share = 1.0 - slot.share if slot.challenger is not None else 1.0
                version = slot.champion.model.version
                yield Observation(share, {"use_case": use_case, "version": version, "role": "champion"})

    meter.create_observable_gauge(
        "nextbest.scoring.model.serving",
        callbacks=[observe],
        unit="1",
        description="Share of customers served by each loaded model version, per use case, version and role.",
    )
