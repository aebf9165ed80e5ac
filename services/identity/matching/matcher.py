"""Online matching: one incoming trait record against the stored records its blocking keys found."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.identity.matching.compare import FIELDS, MISSING, compare, exact_values
from services.identity.matching.model import MatchModel
from services.identity.matching.traits import PersonTraits


@dataclass(frozen=True, slots=True)
class FieldAgreement:
    """How one field compared: its level label and the evidence in bits."""

    field: str
    level: str
    weight: float


@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    """A customer the traits may belong to, with the best-scoring of its stored trait records."""

    customer_id: str
    probability: float
    agreeing: tuple[FieldAgreement, ...]


class TraitMatcher:
    """Scores a trait record against candidates with a `MatchModel`; best customer first."""

    def __init__(self, model: MatchModel) -> None:
        self.model = model

    def score(
        self, query: PersonTraits, candidates: Iterable[tuple[str, PersonTraits]], limit: int = 5
    ) -> list[ScoredCandidate]:
        best: dict[str, tuple[float, tuple[int, ...]]] = {}
        for customer_id, stored in candidates:
            pattern = compare(query, stored)
            weight = self.model.weight(pattern, exact_values(query, pattern))
            if customer_id not in best or weight > best[customer_id][0]:
                best[customer_id] = (weight, pattern)
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
        return [
            ScoredCandidate(customer_id, self.model.probability(weight), self.agreeing(pattern))
            for customer_id, (weight, pattern) in ranked
        ]

    def agreeing(self, pattern: tuple[int, ...]) -> tuple[FieldAgreement, ...]:
        """The fields that agreed at least partly (positive evidence), strongest first."""
        found = [
            FieldAgreement(spec.name, spec.levels[level], round(self.model.level_weight(i, level), 3))
            for i, (spec, level) in enumerate(zip(FIELDS, pattern, strict=True))
            if level != MISSING and level != spec.disagree and self.model.level_weight(i, level) > 0
        ]
        return tuple(sorted(found, key=lambda agreement: -agreement.weight))
