"""Validation of off-policy evaluation on Kevin Hillstrom's MineThatData e-mail experiment (2008, 64,000 customers).

Each customer was randomly sent the men's e-mail, the women's e-mail or none, each with probability 1/3, so every
row is a logged round with a known propensity. The rows are split in two halves (seeded): a reward model (XGBoost,
one model with the arm as one-hot features) learns on one half; on the other, IPS, self-normalised IPS and doubly
robust estimate the value of five policies. For the three fixed policies and uniform random the truth is also
observable — the held-out mean of the customers the experiment gave that policy's choice — so the estimators can be
checked against it; the fifth, the reward model's best arm per customer, is what a retailer would ship.

SNIPS of a fixed policy is exactly its arm's observed mean (sum w r / sum w over that arm's rows); IPS and doubly
robust are the informative checks.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from libs.stats import mean_interval
from services.decision.domain.ope import (
    Estimate,
    Evaluation,
    FixedPolicy,
    LookupPolicy,
    Round,
    UniformPolicy,
    evaluate,
)

#: The arms as actions, in the order of the reward model's columns; the CSV's `segment` names them.
ACTIONS = ("mens", "womens", "none")
SEGMENTS = {"Mens E-Mail": "mens", "Womens E-Mail": "womens", "No E-Mail": "none"}
PROPENSITY = 1 / 3
REWARDS = ("conversion", "visit", "spend")
ZIP_CODES = ("Urban", "Surburban", "Rural")  # sic: the file spells it so
CHANNELS = ("Phone", "Web", "Multichannel")
#: The customer's columns as model features (categories one-hot; `history_segment` by its leading rank "3) ...").
CUSTOMER_FEATURES = (
    "recency", "history_segment", "history", "mens", "womens", "newbie",
    *(f"zip_{z.lower()}" for z in ZIP_CODES), *(f"channel_{c.lower()}" for c in CHANNELS),
)
MODEL_FEATURES = (*CUSTOMER_FEATURES, *(f"arm_{a}" for a in ACTIONS))
#: One thread: on 32,000 rows a tree takes milliseconds, and a second OpenMP thread on a busy two-core machine
#: made training fifty times slower (spinning workers waiting for a core), measured.
TREE_PARAMS = {"max_depth": 3, "eta": 0.05, "min_child_weight": 5, "subsample": 0.8, "nthread": 1}
MAX_TREES, EARLY_STOPPING = 400, 30


@dataclass(frozen=True)
class Experiment:
    customers: np.ndarray  # rows x CUSTOMER_FEATURES
    arms: np.ndarray  # index into ACTIONS
    rewards: np.ndarray
    reward: str  # which outcome `rewards` holds


def _one_hot(value: str, levels: Sequence[str], column: str) -> list[float]:
    if value not in levels:
        raise ValueError(f"{column} {value!r} is not one of {', '.join(levels)}")
    return [float(value == level) for level in levels]


def read_experiment(path: Path, reward: str = "conversion") -> Experiment:
    """The CSV as customer features, arm indices and the chosen outcome; a malformed row is a ValueError naming it."""
    if reward not in REWARDS:
        raise ValueError(f"reward {reward!r} is not one of {', '.join(REWARDS)}")
    customers, arms, rewards = [], [], []
    with path.open(newline="") as file:
        for line, row in enumerate(csv.DictReader(file), start=2):
            try:
                if None in row.values():  # DictReader's filler for the fields a short row lacks
                    raise ValueError("too few fields")
                customers.append([
                    float(row["recency"]), float(row["history_segment"].partition(")")[0]), float(row["history"]),
                    float(row["mens"]), float(row["womens"]), float(row["newbie"]),
                    *_one_hot(row["zip_code"], ZIP_CODES, "zip_code"),
                    *_one_hot(row["channel"], CHANNELS, "channel"),
                ])
                if row["segment"] not in SEGMENTS:
                    raise ValueError(f"segment {row['segment']!r} is not one of {', '.join(SEGMENTS)}")
                arms.append(ACTIONS.index(SEGMENTS[row["segment"]]))
                rewards.append(float(row[reward]))
                if not math.isfinite(rewards[-1]):
                    raise ValueError(f"{reward} {row[reward]!r} is not a finite number")
            except KeyError as exc:
                raise ValueError(f"no column {exc}") from exc
            except ValueError as exc:
                raise ValueError(f"line {line}: {exc}") from exc
    if not arms:
        raise ValueError("no rows")
    return Experiment(np.asarray(customers), np.asarray(arms), np.asarray(rewards), reward)


def _with_arm(customers: np.ndarray, arm: np.ndarray | int) -> np.ndarray:
    arms = np.zeros((len(customers), len(ACTIONS)))
    arms[np.arange(len(customers)), arm] = 1.0
    return np.hstack([customers, arms])


def fit_reward_model(experiment: Experiment, rows: np.ndarray, *, seed: int = 0):
    """Boosted trees predicting the reward from the customer and the arm, early-stopped on a fifth of `rows`."""
    import xgboost as xgb  # offline only

    rows = np.random.default_rng(seed).permutation(rows)
    cut = len(rows) * 4 // 5
    # Spend is mostly zero with a long tail: Tweedie fits it where squared error stops at the first tree.
    objective = "reg:tweedie" if experiment.reward == "spend" else "binary:logistic"
    params = {**TREE_PARAMS, "seed": seed, "objective": objective}

    def matrix(part: np.ndarray) -> xgb.DMatrix:
        return xgb.DMatrix(_with_arm(experiment.customers[part], experiment.arms[part]),
                           label=experiment.rewards[part], feature_names=list(MODEL_FEATURES))

    booster = xgb.train(params, matrix(rows[:cut]), num_boost_round=MAX_TREES,
                        evals=[(matrix(rows[cut:]), "validation")], early_stopping_rounds=EARLY_STOPPING,
                        verbose_eval=False)
    return booster[: booster.best_iteration + 1]


def predict_every_arm(booster, customers: np.ndarray) -> np.ndarray:
    """q(x, a): the model's expected reward of each customer (rows) under each arm (columns, as ACTIONS)."""
    import xgboost as xgb

    return np.column_stack([
        booster.predict(xgb.DMatrix(_with_arm(customers, arm), feature_names=list(MODEL_FEATURES)))
        for arm in range(len(ACTIONS))
    ])


@dataclass(frozen=True)
class PolicyValue:
    policy: str
    evaluation: Evaluation
    observed: Estimate | None  # the held-out mean of the customers the experiment treated as the policy would
    observed_rows: int

    @property
    def ips_covers_observed(self) -> bool | None:
        return None if self.observed is None else self.evaluation.ips.low <= self.observed.value <= self.evaluation.ips.high

    @property
    def dr_covers_observed(self) -> bool | None:
        dr = self.evaluation.dr
        return None if self.observed is None or dr is None else dr.low <= self.observed.value <= dr.high


@dataclass(frozen=True)
class Validation:
    reward: str
    seed: int
    train_rows: int
    held_out_rows: int
    trees: int
    learned_choices: dict[str, int]  # how many held-out customers the learned policy gives each arm
    policies: list[PolicyValue]

    def policy(self, name: str) -> PolicyValue:
        return next(p for p in self.policies if p.policy == name)


def _observed(rewards: np.ndarray) -> Estimate:
    return Estimate(*mean_interval(rewards.tolist()))


def validate(experiment: Experiment, *, seed: int = 0, resamples: int = 1000) -> Validation:
    """Fit on one seeded half, estimate the five policies on the other (see the module docstring)."""
    order = np.random.default_rng(seed).permutation(len(experiment.arms))
    train, held_out = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    booster = fit_reward_model(experiment, train, seed=seed)
    q = predict_every_arm(booster, experiment.customers[held_out])
    logging = dict.fromkeys(ACTIONS, PROPENSITY)
    rounds = [
        Round(str(index), ACTIONS[experiment.arms[row]], logging, ACTIONS, None, 0.0, float(experiment.rewards[row]))
        for index, row in enumerate(held_out)
    ]

    expected = [dict(zip(ACTIONS, row, strict=True)) for row in q.tolist()]  # per held-out row, as round ids

    def reward_model(round_: Round) -> dict[str, float]:
        return expected[int(round_.decision_id)]

    best = q.argmax(axis=1)
    learned = LookupPolicy({str(index): ACTIONS[arm] for index, arm in enumerate(best)}, name="learned")
    held_out_arms, held_out_rewards = experiment.arms[held_out], experiment.rewards[held_out]
    candidates = [
        *((f"everyone {action}", FixedPolicy(action), held_out_rewards[held_out_arms == arm])
          for arm, action in enumerate(ACTIONS)),
        ("uniform random", UniformPolicy(), held_out_rewards),  # the experiment itself: every held-out row
        ("learned per customer", learned, None),
    ]
    values = [
        PolicyValue(name, evaluate(rounds, policy, reward_model=reward_model, resamples=resamples, seed=seed),
                    None if observed is None else _observed(observed), 0 if observed is None else len(observed))
        for name, policy, observed in candidates
    ]
    counts = np.bincount(best, minlength=len(ACTIONS))
    return Validation(experiment.reward, seed, len(train), len(held_out), booster.num_boosted_rounds(),
                      {action: int(count) for action, count in zip(ACTIONS, counts, strict=True)}, values)
