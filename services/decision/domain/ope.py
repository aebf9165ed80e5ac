"""Off-policy evaluation of the first slot: what a candidate policy would have earned, from the logged decisions.

Each logged decision is a contextual-bandit round: the context's candidate pool, the offer that took the first slot
(or none), the exact probability the logging policy gave it (`mu`: 1 for a greedy choice, epsilon-greedy's share
when exploring, 1/|pool| for the control group's draw), and its reward (revenue or acceptance of that offer). A
candidate policy gives its own probability `pi` for the same offer, and

- IPS estimates the candidate's value as mean(pi/mu * reward) — unbiased when mu > 0 wherever pi > 0;
- self-normalised IPS divides by the sum of the weights instead of n — a little biased, far less variable;
- doubly robust adds a reward model q(x, a) supplied by the caller (for the decision log, the cross-fitted model of
  services/decision/offline/reward_model.py; for Hillstrom, offline/hillstrom.py's): mean(sum_a pi(a) q(x, a) + pi/mu * (reward -
  q(x, logged))) — the model's prediction for the candidate, corrected by the weighted residual of what was logged.
  Unbiased however wrong q is (the correction has the model's error as its expectation), and the better q, the
  smaller the variance: a perfect q leaves only the reward's own noise;
- the 95% intervals are percentiles of a bootstrap over decisions.

Where the candidate puts mass on an offer the logging policy never chose (mu = 0: a greedy log holds no evidence
about the others), IPS is blind; `unsupported` reports that mass so the number is not trusted silently. Exploration
(`NEXTBEST_DECISION_EXPLORATION_EPSILON`) and the control group are what give the log its support.

Pure: plain dicts from the stored trace in, numbers out (the CLI reads the log; reward models are fitted offline).
A round's reward counts only the outcomes within the attribution window after its decision (as GetReport does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.decision.domain.experiment import CONTROL

#: The "action" of a decision that returned no offer.
NO_OFFER = ""


@dataclass(frozen=True)
class Round:
    """One logged decision's first slot."""

    decision_id: str
    action: str  # the first-slot offer id, or NO_OFFER
    logging: Mapping[str, float]  # mu over the first slot: offer id (or NO_OFFER) -> probability
    pool: tuple[str, ...]  # every offer the policy could have put first
    #: The arbitration score of every pool member; None when they were not all scored (control draws).
    scores: Mapping[str, float] | None
    min_priority: float
    reward: float

    @property
    def propensity(self) -> float:
        return self.logging.get(self.action, 0.0)


def logged_round(
    decision_id: str, offers: Sequence[Mapping[str, Any]], trace: Mapping[str, Any], reward: float
) -> Round:
    """The first slot of a stored decision (`offers` and `trace` as `decision_decisions` holds them)."""
    first = next((o["offer_id"] for o in offers if o.get("rank") == 1), NO_OFFER)
    considered = trace.get("considered", [])
    scored = {c["offer_id"]: float(c["score"]) for c in considered if "score" in c}
    min_priority = float(trace.get("min_priority", 0.0))
    if trace.get("arm") == CONTROL:
        not_drawn = [c["offer_id"] for c in considered if c.get("removed") == "control_not_drawn"]
        pool = tuple(sorted({*not_drawn, *([first] if first else [])}))
        logging = {o: float(trace.get("control_probability", 1.0)) for o in pool} if first else {NO_OFFER: 1.0}
        return Round(decision_id, first, logging, pool, None, 0.0, reward)
    exploration = trace.get("exploration")
    if exploration:
        logging = {o: float(p) for o, p in exploration["first_probability"].items()}
    else:
        logging = {first: 1.0}
    return Round(decision_id, first, logging, tuple(sorted(scored)), scored, min_priority, reward)


@dataclass(frozen=True)
class GreedyPolicy:
    """Arbitration as configured, with some offers' levers changed: the best re-scored offer at or above the
    minimum priority, and with `epsilon` a uniform draw among the `top` best (as in `domain/arbitration.py`)."""

    levers: Mapping[str, float] = field(default_factory=dict)  # offer id -> factor on its logged score
    epsilon: float = 0.0
    top: int = 5

    def probabilities(self, round_: Round) -> Mapping[str, float] | None:
        """pi over the first slot, or None when the round lacks the scores to tell (a control draw)."""
        if round_.scores is None:
            return None
        rescored = sorted(
            ((score * self.levers.get(offer_id, 1.0), offer_id) for offer_id, score in round_.scores.items()),
            key=lambda pair: (-pair[0], pair[1]),
        )
        pool = [offer_id for score, offer_id in rescored if score >= round_.min_priority][: max(1, self.top)]
        if not pool:
            return {NO_OFFER: 1.0}
        share = self.epsilon / len(pool)
        return {offer_id: share + (1 - self.epsilon) * (index == 0) for index, offer_id in enumerate(pool)}


@dataclass(frozen=True)
class UniformPolicy:
    """One offer of the pool drawn uniformly (what the control group gets with `control_offer` "random")."""

    def probabilities(self, round_: Round) -> Mapping[str, float]:
        if not round_.pool:
            return {NO_OFFER: 1.0}
        return {offer_id: 1 / len(round_.pool) for offer_id in round_.pool}


@dataclass(frozen=True)
class FixedPolicy:
    """The same action in every round (e.g. "everyone gets the men's e-mail")."""

    action: str

    def probabilities(self, round_: Round) -> Mapping[str, float]:
        return {self.action: 1.0}


@dataclass(frozen=True, repr=False)
class LookupPolicy:
    """An action chosen beforehand for each decision id (e.g. a reward model's best action per customer)."""

    choices: Mapping[str, str]
    name: str = "lookup"

    def probabilities(self, round_: Round) -> Mapping[str, float] | None:
        action = self.choices.get(round_.decision_id)
        return None if action is None else {action: 1.0}

    def __repr__(self) -> str:  # not 32,000 choices in a report
        return f"LookupPolicy({self.name!r}, {len(self.choices)} choices)"


class Policy(Protocol):
    def probabilities(self, round_: Round) -> Mapping[str, float] | None:
        """pi over the first slot, or None when the policy cannot be evaluated on this round."""


#: A reward model: the expected reward of each action in a round's context (what the candidate might choose).
#: Actions it leaves out count as an expected reward of 0.
RewardModel = Callable[[Round], Mapping[str, float]]


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Evaluation:
    rounds: int  # decisions evaluated
    skipped: int  # decisions the policy could not be evaluated on (control draws for a re-scoring policy)
    logged_value: float  # mean reward of the logging policy over the same decisions
    ips: Estimate
    snips: Estimate
    effective_sample_size: float  # (sum w)^2 / sum w^2: how many decisions the estimate is really worth
    max_weight: float
    unsupported: float  # mean candidate mass on offers the logging policy never chose
    dr: Estimate | None = None  # doubly robust, when a reward model was given
    #: The logging policy's own value on the same decisions with its bootstrap interval: a sanity line (an
    #: estimate for a policy close to the logged one should land near it).
    logged: Estimate | None = None


#: Resamples drawn at once: the (chunk x rounds) draws stay small however long the log.
_BOOTSTRAP_CHUNK = 64


def _bootstrap_sums(columns: Sequence[Any], resamples: int, seed: int):
    """The sums of each column (a 1-D array per quantity, one value per round) over `resamples` resamples of the
    rounds with replacement: a (resamples x columns) array."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(columns[0])
    sums = []
    for done in range(0, resamples, _BOOTSTRAP_CHUNK):
        drawn = rng.integers(0, n, size=(min(_BOOTSTRAP_CHUNK, resamples - done), n))
        sums.append(np.column_stack([np.take(column, drawn).sum(axis=1) for column in columns]))
    return np.concatenate(sums)


def evaluate(
    rounds: Sequence[Round],
    policy: Policy,
    *,
    reward_model: RewardModel | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> Evaluation:
    """IPS, self-normalised IPS and (with a reward model) doubly robust estimates of `policy`, with
    percentile-bootstrap 95% intervals (seeded: reproducible)."""
    import numpy as np  # the CLI's tool only; the serving path never loads it

    weights, rewards, direct, unsupported, skipped = [], [], [], 0.0, 0
    for round_ in rounds:
        pi = policy.probabilities(round_)
        if pi is None or round_.propensity <= 0:
            skipped += 1
            continue
        weights.append(pi.get(round_.action, 0.0) / round_.propensity)
        rewards.append(round_.reward)
        unsupported += sum(p for a, p in pi.items() if round_.logging.get(a, 0.0) <= 0)
        if reward_model is not None:
            q = reward_model(round_)
            # The model's value of the candidate, and its prediction for what was logged (the residual's baseline).
            direct.append((sum(p * q.get(a, 0.0) for a, p in pi.items()), q.get(round_.action, 0.0)))
    if not weights:
        nothing = Estimate(0.0, 0.0, 0.0)
        return Evaluation(0, skipped, 0.0, nothing, nothing, 0.0, 0.0, 0.0, None if reward_model is None else nothing)
    w, r = np.asarray(weights), np.asarray(rewards)
    n = len(w)
    columns = [w * r, w, r]
    if reward_model is not None:
        q_pi, q_logged = np.asarray(direct).T
        columns.append(q_pi + w * (r - q_logged))
    sums = _bootstrap_sums(columns, resamples, seed)
    point = [column.sum() for column in columns]

    def estimate(value: float, resampled) -> Estimate:
        return Estimate(float(value), *(float(q) for q in np.nanpercentile(resampled, [2.5, 97.5])))

    if w.sum() > 0:
        with np.errstate(invalid="ignore", divide="ignore"):
            snips = estimate(point[0] / point[1], sums[:, 0] / sums[:, 1])  # NaN where a resample drew no weight
    else:  # the candidate never agrees with the log: self-normalising has nothing to normalise
        snips = Estimate(math.nan, math.nan, math.nan)
    return Evaluation(
        rounds=n,
        skipped=skipped,
        logged_value=float(r.mean()),
        ips=estimate(point[0] / n, sums[:, 0] / n),
        snips=snips,
        effective_sample_size=float(w.sum() ** 2 / (w**2).sum()) if (w**2).sum() > 0 else 0.0,
        max_weight=float(w.max()),
        unsupported=unsupported / n,
        dr=estimate(point[3] / n, sums[:, 3] / n) if reward_model is not None else None,
        logged=estimate(point[2] / n, sums[:, 2] / n),
    )
