"""The Fellegi–Sunter model: m and u probabilities per field level, their estimation by EM, term-frequency
adjustment, and match weights turned into probabilities.

m[f][l] = P(field f compares at level l | the records are the same person);
u[f][l] = P(field f compares at level l | they are not). A pair's match weight is the log2 prior odds plus
sum_f log2(m/u) over the fields present on both sides (conditional independence); its match probability is
2^w / (1 + 2^w).

Term frequency: agreeing exactly on "smith" is weaker evidence than agreeing on "zbigniewski". For a field with
term-frequency adjustment the exact level's weight gets log2(sum_v tf(v)^2 / tf(value)) added: the ratio of how
often random pairs agree on any value to how often they agree on this one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from services.identity.matching.compare import FIELDS, MISSING, Pattern, vetoed

#: Probabilities are kept inside [FLOOR, 1 - FLOOR] so no level is ever impossible (log of zero).
FLOOR = 1e-6
#: A term-frequency adjustment never moves a weight by more than this many bits either way.
MAX_TF_BITS = 6.0


def _default_m() -> list[list[float]]:
    # Sane priors for very little data: matches mostly agree, with the typo/nickname levels carrying some mass.
    return [
        [0.85, 0.04, 0.05, 0.03, 0.03],  # given_name
        [0.90, 0.05, 0.03, 0.02],  # surname
        [0.90, 0.06, 0.01, 0.01, 0.02],  # date_of_birth
        [0.78, 0.05, 0.03, 0.02, 0.12],  # address (people move)
        [0.90, 0.04, 0.06],  # phone
    ]


def _default_u() -> list[list[float]]:
    return [
        [0.01, 0.002, 0.01, 0.05, 0.928],
        [0.005, 0.005, 0.03, 0.96],
        [0.00005, 0.0005, 0.003, 0.015, 0.98145],
        [0.00005, 0.0005, 0.003, 0.01, 0.98645],
        [0.00001, 0.0001, 0.99989],
    ]


@dataclass
class MatchModel:
    """Fellegi–Sunter parameters and term frequencies; `weight`/`probability` score a comparison pattern."""

    prior: float = 1e-4
    m: list[list[float]] = field(default_factory=_default_m)
    u: list[list[float]] = field(default_factory=_default_u)
    #: Per term-frequency field: value -> relative frequency among the records the model was fitted on.
    term_frequencies: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Per term-frequency field: sum of squared frequencies (how often random pairs agree on any value).
    agreement_rates: dict[str, float] = field(default_factory=dict)
    #: Per term-frequency field: the frequency assumed for a value not in the table.
    unseen_frequency: dict[str, float] = field(default_factory=dict)
    fitted_on: int = 0

    def __post_init__(self) -> None:
        self._refresh()

    def _refresh(self) -> None:
        self._weights = [
            [math.log2(max(m, FLOOR) / max(u, FLOOR)) for m, u in zip(ms, us, strict=True)]
            for ms, us in zip(self.m, self.u, strict=True)
        ]
        self._prior_bits = math.log2(self.prior / (1 - self.prior))
        self._pattern_cache: dict[Pattern, float] = {}

    def level_weight(self, field_index: int, level: int) -> float:
        return 0.0 if level == MISSING else self._weights[field_index][level]

    def pattern_weight(self, pattern: Pattern) -> float:
        """Prior log2-odds plus every present field's weight, without term-frequency adjustment (cached); -inf
        for a vetoed contradiction (`compare.VETOES`)."""
        weight = self._pattern_cache.get(pattern)
        if weight is None and vetoed(pattern):
            weight = self._pattern_cache[pattern] = -math.inf
        if weight is None:
            weight = self._prior_bits + sum(
                w[level] for w, level in zip(self._weights, pattern, strict=True) if level != MISSING
            )
            self._pattern_cache[pattern] = weight
        return weight

    def tf_adjustment(self, field_name: str, value: str) -> float:
        table = self.term_frequencies.get(field_name)
        rate = self.agreement_rates.get(field_name)
        if not table or not rate:
            return 0.0
        frequency = table.get(value) or self.unseen_frequency.get(field_name) or rate
        return max(-MAX_TF_BITS, min(MAX_TF_BITS, math.log2(rate / frequency)))

    def weight(self, pattern: Pattern, exact_values: Iterable[str | None] = ()) -> float:
        """The match weight (log2 odds) of a pattern; `exact_values` as from `compare.exact_values`."""
        total = self.pattern_weight(pattern)
        for spec, value in zip(FIELDS, exact_values, strict=False):
            if value is not None:
                total += self.tf_adjustment(spec.name, value)
        return total

    @staticmethod
    def probability(weight: float) -> float:
        if weight > 60:
            return 1.0
        if weight < -60:
            return 0.0
        odds = 2.0**weight
        return odds / (1.0 + odds)

    def explain(self, pattern: Pattern) -> list[tuple[str, str, float]]:
        """(field, level label, weight) for each field present on both sides, strongest evidence first."""
        rows = [
            (spec.name, spec.levels[level], self._weights[i][level])
            for i, (spec, level) in enumerate(zip(FIELDS, pattern, strict=True))
            if level != MISSING
        ]
        return sorted(rows, key=lambda row: -row[2])

    # --- term frequencies -----------------------------------------------------------------------------------

    def fit_term_frequencies(self, columns: Mapping[str, Iterable[str]], keep: int = 20_000) -> None:
        """Frequencies of the term-frequency fields' values (the `keep` most common are stored)."""
        for name, values in columns.items():
            counts: dict[str, int] = {}
            total = 0
            for value in values:
                if value:
                    counts[value] = counts.get(value, 0) + 1
                    total += 1
            if not total:
                continue
            frequencies = {value: count / total for value, count in counts.items()}
            self.agreement_rates[name] = sum(f * f for f in frequencies.values())
            kept = sorted(frequencies.items(), key=lambda item: -item[1])[:keep]
            self.term_frequencies[name] = dict(kept)
            # A value not kept is rarer than every kept one; a value never seen counts as seen once.
            self.unseen_frequency[name] = min(kept[-1][1], 1 / total) if len(kept) < len(frequencies) else 1 / total

    # --- serialisation ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "prior": self.prior,
            "m": self.m,
            "u": self.u,
            "term_frequencies": self.term_frequencies,
            "agreement_rates": self.agreement_rates,
            "unseen_frequency": self.unseen_frequency,
            "fitted_on": self.fitted_on,
            "fields": [[spec.name, list(spec.levels)] for spec in FIELDS],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> MatchModel:
        """A stored model; a model stored for other fields or levels is refused (ValueError): re-estimate."""
        if data.get("fields") != [[spec.name, list(spec.levels)] for spec in FIELDS]:
            raise ValueError("the stored match model was fitted for other comparison levels")
        return cls(
            prior=data["prior"],
            m=data["m"],
            u=data["u"],
            term_frequencies=data.get("term_frequencies", {}),
            agreement_rates=data.get("agreement_rates", {}),
            unseen_frequency=data.get("unseen_frequency", {}),
            fitted_on=data.get("fitted_on", 0),
        )


@dataclass(frozen=True)
class EmResult:
    """What EM converged to."""

    prior: float
    m: list[list[float]]
    u: list[list[float]]
    iterations: int
    converged: bool


def estimate(
    pattern_counts: Mapping[Pattern, int],
    *,
    start: MatchModel | None = None,
    max_iterations: int = 200,
    tolerance: float = 1e-7,
    fixed_u: bool = False,
) -> EmResult:
    """Expectation–maximisation of prior, m and u from unlabelled comparison patterns (with their counts).

    The latent class is "same person"; missing levels are ignored in both steps (missing at random). Works on
    distinct patterns with counts, so a million compared pairs costs what a few thousand distinct patterns do.
    With `fixed_u` only prior and m are updated (u estimated elsewhere, e.g. from random pairs).
    """
    if not pattern_counts:
        raise ValueError("no comparison patterns to estimate from")
    start = start or MatchModel()
    patterns = np.array(list(pattern_counts), dtype=np.int64)
    counts = np.array(list(pattern_counts.values()), dtype=np.float64)
    total = counts.sum()
    # Each field's probabilities get one extra slot, always 1.0, that MISSING (-1) indexes: it then multiplies
    # nothing in.
    m = [np.append(np.clip(np.array(level_m, dtype=np.float64), FLOOR, 1), 1.0) for level_m in start.m]
    u = [np.append(np.clip(np.array(level_u, dtype=np.float64), FLOOR, 1), 1.0) for level_u in start.u]
    prior = min(max(start.prior, 1e-6), 0.5)
    converged = False
    iteration = 0
    while iteration < max_iterations:
        iteration += 1
        log_m = np.zeros(len(patterns))
        log_u = np.zeros(len(patterns))
        for f in range(len(m)):
            column = patterns[:, f]
            log_m += np.log(m[f][column])
            log_u += np.log(u[f][column])
        # Posterior P(match | pattern), computed in log space.
        a = math.log(prior) + log_m
        b = math.log(1 - prior) + log_u
        top = np.maximum(a, b)
        posterior = np.exp(a - top) / (np.exp(a - top) + np.exp(b - top))
        matched = counts * posterior
        unmatched = counts - matched
        new_prior = float(np.clip(matched.sum() / total, 1e-9, 1 - 1e-9))
        change = abs(new_prior - prior)
        for f, spec in enumerate(FIELDS):
            column = patterns[:, f]
            present = column != MISSING
            level_count = len(spec.levels)
            m_counts = np.bincount(column[present], weights=matched[present], minlength=level_count)
            new_m = np.clip(m_counts / max(m_counts.sum(), FLOOR), FLOOR, 1)
            change = max(change, float(np.abs(new_m - m[f][:-1]).max()))
            m[f][:-1] = new_m
            if not fixed_u:
                u_counts = np.bincount(column[present], weights=unmatched[present], minlength=level_count)
                new_u = np.clip(u_counts / max(u_counts.sum(), FLOOR), FLOOR, 1)
                change = max(change, float(np.abs(new_u - u[f][:-1]).max()))
                u[f][:-1] = new_u
        prior = new_prior
        if change < tolerance:
            converged = True
            break
    return EmResult(
        prior=prior,
        m=[[float(x) for x in level_m[:-1]] for level_m in m],
        u=[[float(x) for x in level_u[:-1]] for level_u in u],
        iterations=iteration,
        converged=converged,
    )


def u_from_random_pairs(pattern_counts: Mapping[Pattern, int], smoothing: float = 0.5) -> list[list[float]]:
    """u probabilities from the patterns of randomly drawn pairs (almost all of which are different people)."""
    u: list[list[float]] = []
    for f, spec in enumerate(FIELDS):
        counts = [smoothing] * len(spec.levels)
        for pattern, count in pattern_counts.items():
            if pattern[f] != MISSING:
                counts[pattern[f]] += count
        total = sum(counts)
        u.append([c / total for c in counts])
    return u
