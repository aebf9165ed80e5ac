"""Batch linking: deduplicate one set of records (or link two, as one deduplication of their union).

blocking -> compare every candidate pair once -> u from random pairs, then EM for prior, m and u on the candidates
(no labels) -> term-frequency-adjusted match probability per pair -> clusters of the pairs above the threshold
(union-find). Also the pairwise precision / recall / F1 of clusters against a true-entity column.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.identity.matching.blocking import pairs_by_rule
from services.identity.matching.compare import (
    FIELD_INDEX,
    FIELDS,
    MISSING,
    Pattern,
    compare,
    compare_date,
    compare_given,
    names_swapped,
)
from services.identity.matching.model import MatchModel, estimate, u_from_random_pairs
from services.identity.matching.traits import PersonTraits

#: Random pairs drawn to estimate u (nearly all of them are different people).
RANDOM_PAIRS = 60_000
_TF_FIELDS = [(i, spec.name) for i, spec in enumerate(FIELDS) if spec.term_frequency]


@dataclass
class LinkResult:
    """Cluster label per record (the index of the cluster's first record), the fitted model and run facts."""

    clusters: list[int]
    model: MatchModel
    candidate_pairs: int
    linked_pairs: int
    skipped_blocks: list[str] = field(default_factory=list)
    em_iterations: int = 0


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.size[a] < self.size[b]:
            a, b = b, a
        self.parent[b] = a
        self.size[a] += self.size[b]


#: Training rules: the pairs of one blocking rule, with the fields that rule selected on masked (they agree by
#: construction there, so they say nothing about m). Among such pairs the non-matches are close to random people
#: in the unmasked fields, so u from random pairs holds, and EM has only the prior and m to find. (Letting EM also
#: move u on blocked pairs converges on "same household" instead of "same person".)
TRAINING_RULES: dict[str, frozenset[str]] = {
    "dob": frozenset({"date_of_birth"}),
    "names": frozenset({"given_name", "surname"}),
    "postcode_initials": frozenset({"address", "given_name", "surname"}),
}
#: Pairs per training rule fed to EM (a sample of the larger rules is as informative and much cheaper).
TRAINING_PAIRS = 200_000


def fit_model(
    records: Sequence[PersonTraits],
    patterns_by_rule: Mapping[str, Counter[Pattern]],
    *,
    seed: int = 0,
    random_pairs: int = RANDOM_PAIRS,
) -> tuple[MatchModel, int]:
    """A model fitted on these records, without labels: term frequencies; u from random pairs; then per training
    rule, EM for the prior and m with that rule's fields masked; m = mean over the rules that saw each field; the
    prior over all pairs from the date-of-birth rule's share of matches."""
    model = MatchModel()
    model.fit_term_frequencies({name: (getattr(record, name) for record in records) for _, name in _TF_FIELDS})
    n = len(records)
    rng = random.Random(seed)
    if n >= 50:
        sampled: Counter[Pattern] = Counter()
        for _ in range(min(random_pairs, n * (n - 1) // 2)):
            i, j = rng.randrange(n), rng.randrange(n)
            if i != j:
                sampled[compare(records[i], records[j])] += 1
        model.u = u_from_random_pairs(sampled)
    estimates: dict[int, list[list[float]]] = {f: [] for f in range(len(FIELDS))}
    iterations = 0
    matches_in_dob_rule: float | None = None
    for rule, masked in TRAINING_RULES.items():
        masked_indexes = {i for i, spec in enumerate(FIELDS) if spec.name in masked}
        counts: Counter[Pattern] = Counter()
        for pattern, count in patterns_by_rule.get(rule, Counter()).items():
            counts[tuple(MISSING if i in masked_indexes else level for i, level in enumerate(pattern))] += count
        if sum(counts.values()) < 200:
            continue  # too little to learn from: the defaults stand
        start = MatchModel(prior=0.3, m=model.m, u=model.u)
        result = estimate(counts, start=start, fixed_u=True)
        iterations += result.iterations
        for f in range(len(FIELDS)):
            if f not in masked_indexes:
                estimates[f].append(result.m[f])
        if rule == "dob":
            matches_in_dob_rule = result.prior * sum(counts.values())
    model.m = [
        [sum(column) / len(found) for column in zip(*found, strict=True)] if found else model.m[f]
        for f, found in estimates.items()
    ]
    dob_index = FIELD_INDEX["date_of_birth"]
    if matches_in_dob_rule is not None and n >= 2:
        # The dob rule holds the matches whose dates agree exactly: m[dob][exact] of all matches (minus those
        # with a missing date, which the rule cannot see).
        agree_share = model.m[dob_index][0] * (1 - _missing_share(records, "date_of_birth")) ** 2
        true_pairs = matches_in_dob_rule / max(agree_share, 1e-3)
        model.prior = min(max(true_pairs / (n * (n - 1) / 2), 1e-9), 0.5)
    elif n >= 2:
        model.prior = min(max(1.0 / n, 1e-9), 0.5)  # about one duplicate per record at most
    model.fitted_on = n
    model._refresh()
    return model, iterations


def _missing_share(records: Sequence[PersonTraits], name: str) -> float:
    return sum(1 for record in records if not getattr(record, name)) / max(len(records), 1)


def link(
    records: Sequence[PersonTraits],
    *,
    threshold: float = 0.9,
    model: MatchModel | None = None,
    seed: int = 0,
) -> LinkResult:
    """Cluster records that are the same person. Without `model`, one is fitted on these records."""
    n = len(records)
    skipped: list[str] = []
    by_rule = pairs_by_rule(records, skipped=skipped)
    all_pairs: set[int] = set().union(*by_rule.values())
    pattern_ids: dict[Pattern, int] = {}
    patterns: list[Pattern] = []
    pair_pattern: dict[int, int] = {}
    for code in all_pairs:
        i, j = divmod(code, n)
        pattern = compare(records[i], records[j])
        pid = pattern_ids.get(pattern)
        if pid is None:
            pid = pattern_ids[pattern] = len(patterns)
            patterns.append(pattern)
        pair_pattern[code] = pid
    iterations = 0
    if model is None:
        rng = random.Random(seed)
        patterns_by_rule: dict[str, Counter[Pattern]] = {}
        for rule in TRAINING_RULES:
            codes = list(by_rule.get(rule, ()))
            if len(codes) > TRAINING_PAIRS:
                codes = rng.sample(sorted(codes), TRAINING_PAIRS)
            patterns_by_rule[rule] = Counter(patterns[pair_pattern[code]] for code in codes)
        model, iterations = fit_model(records, patterns_by_rule, seed=seed)
    # A weight threshold instead of a probability per pair: one comparison of floats in the hot loop.
    weight_threshold = math.log2(threshold / (1 - threshold))
    base = [model.pattern_weight(pattern) for pattern in patterns]
    tf_cache: dict[tuple[int, str], float] = {}
    links: list[tuple[float, int, int]] = []
    for code, pid in pair_pattern.items():
        weight = base[pid]
        if weight == -math.inf:
            continue
        pattern = patterns[pid]
        i, j = divmod(code, n)
        a = records[i]
        for index, name in _TF_FIELDS:
            if pattern[index] == 0:
                value = getattr(a, name)
                key = (index, value)
                adjustment = tf_cache.get(key)
                if adjustment is None:
                    adjustment = tf_cache[key] = model.tf_adjustment(name, value)
                weight += adjustment
        if weight >= weight_threshold:
            links.append((weight, i, j))
    sets = _cluster(records, links)
    linked = len(links)
    roots = [sets.find(i) for i in range(n)]
    # Label each cluster by its first record, so labels do not depend on union order.
    first: dict[int, int] = {}
    clusters = [first.setdefault(root, i) for i, root in enumerate(roots)]
    return LinkResult(clusters, model, len(pair_pattern), linked, skipped, iterations)


def _cluster(records: Sequence[PersonTraits], links: list[tuple[float, int, int]]) -> UnionFind:
    """Union of the links, strongest first, refusing a union that would put contradicting records in one cluster.

    Transitive closure alone chains people together through a record that lacks the field telling them apart
    ("James Zona" without a date of birth links to both James Zona born 1972 and James Zona born 2000, father and
    son at one address). So each cluster keeps its distinct given names and dates of birth, and two clusters are
    only joined when no pair of them is a veto-level contradiction (`compare.VETOES`).
    """
    sets = UnionFind(len(records))
    names: dict[int, set[str]] = {}
    dates: dict[int, set[str]] = {}
    for i, record in enumerate(records):
        names[i] = {record.given_name} if record.given_name else set()
        dates[i] = {record.date_of_birth} if record.date_of_birth else set()
    given_disagree = FIELDS[FIELD_INDEX["given_name"]].disagree
    date_disagree = FIELDS[FIELD_INDEX["date_of_birth"]].disagree
    for _, i, j in sorted(links, reverse=True):
        a, b = sets.find(i), sets.find(j)
        if a == b:
            continue
        if any(compare_date(x, y) == date_disagree for x in dates[a] for y in dates[b]):
            continue
        # Names are checked both ways round: a swapped record carries the surname in its given-name field.
        if not names_swapped(records[i], records[j]) and any(
            compare_given(x, y) == given_disagree for x in names[a] for y in names[b]
        ):
            continue
        sets.union(a, b)
        root = sets.find(a)
        other = b if root == a else a
        names[root] |= names.pop(other)
        dates[root] |= dates.pop(other)
    return sets


@dataclass(frozen=True)
class PairwiseScore:
    """Pairwise accuracy of predicted clusters against true entities."""

    precision: float
    recall: float
    f1: float
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int
    predicted_clusters: int
    true_clusters: int


def pairwise_score(predicted: Sequence[object], truth: Sequence[object]) -> PairwiseScore:
    """Precision, recall and F1 over record pairs placed together, computed from cluster contingency counts."""
    if len(predicted) != len(truth):
        raise ValueError("predicted and true labels differ in length")

    def pairs(counts: Counter) -> int:
        return sum(c * (c - 1) // 2 for c in counts.values())

    predicted_pairs = pairs(Counter(predicted))
    true_pairs = pairs(Counter(truth))
    correct = pairs(Counter(zip(predicted, truth, strict=True)))
    precision = correct / predicted_pairs if predicted_pairs else 1.0
    recall = correct / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PairwiseScore(
        precision, recall, f1, true_pairs, predicted_pairs, correct, len(set(predicted)), len(set(truth))
    )
